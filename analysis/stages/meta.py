"""Pipeline stage "meta": the SDM-PSI mean analysis, Table 3, Figure 2 and funnel plots.

He et al. (2024) ran SDM-PSI (Albajes-Eizagirre et al. 2019, NeuroImage 186:174-184) on the 11
studies' peaks (20 mm FWHM anisotropic kernel, 2 mm voxels, MetaNSUE multiple imputation) and
reported clusters at voxel p < 0.0025 (uncorrected, one-tailed), peak SDM-Z > 1, k > 10 with
Hedges' g, I^2 and Egger's test at each peak (Table 3) and the thresholded map (Figure 2).

This stage runs the open engine (:class:`analysis.sdm.estimator.SDMPSI`) on ``data/`` and writes:

- ``maps/{g,var,z,tau2,i2,p}.nii.gz``, ``maps/z_thresholded.nii.gz``, ``maps/clusters.nii.gz``;
- ``tables/table3.tsv`` (columns of ``data/published_table3.tsv``), ``tables/table3_peaks.tsv``
  (cluster and local peaks), ``tables/table3_breakdown.tsv`` (AAL voxels per cluster),
  ``tables/table3_vs_published.tsv`` (each published cluster beside the nearest reproduced
  cluster of the same direction);
- ``figures/figure2.{png,svg}``, ``figures/funnels.{png,svg}`` (every cluster's funnel plot
  in one supplementary figure), ``figures/funnel_<cluster>.png`` and
  ``figures/funnel_published_<n>.png`` (reproduced study effects at the n-th published peak);
- ``figures/forests.{png,svg}`` (every cluster peak's forest plot in one supplementary figure)
  and ``figures/forest_<cluster>.png``, drawn from SDM-PSI's extract at the peak
  (:func:`analysis.sdm.diagnostics.voxel.extract_voxel` on the fit's own imputations), and
  ``tables/forest_peaks.tsv`` (the extract's tidy table at every cluster peak).

Where the peaks of some studies are simulated stand-ins (``provenance`` ``simulated:`` in
``data/peaks.tsv``) every output says so; the numbers are then not the paper's data. The values
``standin_generator_versions`` (the generator versions found in the provenance) and
``standins_reproduce_table3_by_construction`` (true only when every stand-in is of the
constructed generator v3, :mod:`analysis.standins`) let the manuscript say whether agreement
with the published Table 3 is built into the data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.grid import MASK_DESCRIPTIONS
from analysis.io import save_figure
from analysis.labels import aal_labeler, cluster_breakdown, relabel_peaks
from analysis.sdm.diagnostics.voxel import FRAME_COLUMNS
from analysis.sdm.errors import DataError
from analysis.sdm.estimator import HETEROGENEITY_NAMES
from analysis.sdm.inference.clusters import (
    DECREASE,
    INCREASE,
    direction_labels,
    threshold_clusters,
    values_at_peaks,
)
from analysis.sdm.inputs.io import save_nifti, write_tsv
from analysis.sdm.inputs.peaks import UNKNOWN_PREFIX
from analysis.sdm.inputs.studies import study_design
from analysis.sdm.maps.space import VOXEL_MM
from analysis.stages import params

LGR = logging.getLogger(__name__)

MAP_NAMES = ("g", "var", "z", "tau2", "i2", "p")
TABLE3_COLUMNS = ["direction", "region", "aal_label", "cluster_voxels", "x", "y", "z", "sdm_z",
                  "p_voxel", "hedges_g", "i2", "egger_p"]
PUBLISHED_FILE = "published_table3.tsv"
#: provenance prefix of peaks imported from a declared source (``import-sdm --source``)
IMPORT_PREFIX = "sdm-import:"
#: Stand-in generator whose stand-ins reproduce the published Table 3 by construction
#: (:mod:`analysis.standins`, ``simulated:v3:...`` provenance).
CONSTRUCTED_VERSION = "3"
#: Table 3 gives I2 in percent, like SDM-PSI's ``_h_i2`` maps, the paper (0.355083 % at the ACC
#: peak) and the engine's ``MetaResult.maps["i2"]`` (analysis.sdm.estimator).
I2_UNIT = "percent"


# --------------------------------------------------------------------------------------------
# inputs


def load_published_table3(data_dir) -> pd.DataFrame:
    """The paper's Table 3 as curated in ``data/published_table3.tsv``."""
    path = Path(data_dir) / PUBLISHED_FILE
    if not path.exists():
        raise DataError(path, "file not found (the published Table 3 to compare against)")
    df = pd.read_csv(path, sep="\t")
    missing = [c for c in TABLE3_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"columns missing: {missing}", field=missing[0])
    for i, d in enumerate(df["direction"], start=1):
        if d not in (INCREASE, DECREASE):
            raise DataError(path, f"expected {INCREASE!r} or {DECREASE!r}, got {d!r}", row=i,
                            field="direction")
    return df[TABLE3_COLUMNS]


def input_provenance(dataset) -> dict:
    """Which studies' peaks are real, simulated stand-ins, or missing (all studies counted).

    :func:`analysis.data_tables.classify_provenance` over every study of the study table: a study is
    simulated when any of its peaks has ``provenance`` starting with ``simulated:``; of unknown
    provenance when any starts with ``unknown:``; real when all start with ``original:`` or
    ``sdm-import:``; studies without peak rows are listed apart.
    ``import_sources`` lists the sources declared at import (``sdm-import:<source>``).
    ``generator_versions`` lists the stand-in generator versions of the simulated rows
    (:func:`analysis.data_tables.generator_versions`): ``["3"]`` for the constructed stand-ins
    of :mod:`analysis.standins`, whose main analysis reproduces the published Table 3 by
    construction, ``["2"]`` for the simulated ones of :mod:`analysis.simulate`.
    """
    from analysis.data_tables import classify_provenance, generator_versions

    studies = list(dataset.studies["study"])
    peaks = dataset.peaks
    # peaks without a provenance column (a NiMARE Dataset, Python objects) are not known real
    prov = (peaks["provenance"].astype(str) if "provenance" in peaks.columns
            else pd.Series(f"{UNKNOWN_PREFIX}no provenance column", index=peaks.index))
    v = classify_provenance(studies, peaks["study"].astype(str), prov)
    return {"n_studies": v.n_studies, "real": v.real, "simulated": v.simulated,
            "no_peaks": v.no_peaks, "statement": v.statement, "n_peaks_real": v.n_peaks_real,
            "n_peaks_simulated": v.n_peaks_simulated, "unknown": v.unknown,
            "n_peaks_unknown": v.n_peaks_unknown,
            "generator_versions": generator_versions(
                prov[peaks["study"].astype(str).isin(set(studies))]),
            "import_sources": sorted({p[len(IMPORT_PREFIX):] for p in prov
                                      if p.startswith(IMPORT_PREFIX)})}


def provenance_values(provenance: dict) -> dict:
    """The stage's record of its inputs' provenance (in ``values.json``).

    The manuscript's provenance notice and limitations are taken from this record
    (:func:`analysis.manuscript_values.provenance`), i.e. from the peaks the maps were computed
    from, not from whatever ``data/`` holds when the manuscript is rendered.

    Parameters
    ----------
    provenance : dict
        Output of :func:`input_provenance`.
    """
    return {
        "n_studies": provenance["n_studies"],
        "inputs_real": len(provenance["real"]),
        "inputs_simulated": len(provenance["simulated"]),
        "inputs_statement": provenance["statement"],
        "real_studies": provenance["real"],
        "simulated_studies": provenance["simulated"],
        "studies_without_peaks": provenance["no_peaks"],
        "n_peaks_real": provenance["n_peaks_real"],
        "n_peaks_simulated": provenance["n_peaks_simulated"],
        "studies_provenance_unknown": provenance["unknown"],
        "n_peaks_provenance_unknown": provenance["n_peaks_unknown"],
        "standin_generator_versions": list(provenance.get("generator_versions", [])),
        "standins_reproduce_table3_by_construction": (
            list(provenance.get("generator_versions", [])) == [CONSTRUCTED_VERSION]),
        # the sources declared at import (``import-sdm --source``), named by the manuscript
        "import_sources": list(provenance.get("import_sources", [])),
    }


def published_comparison_skipped(studies: pd.DataFrame) -> str | None:
    """Why the results of a study table cannot be set beside the published Table 3, or None.

    The published clusters are patient-control differences (``Patients>Controls``,
    ``Patients<Controls``); only a meta-analysis of two-sample studies has that contrast.
    """
    design = study_design(studies)
    if design == "two-sample":
        return None
    what = ("one-sample studies" if design == "one-sample"
            else "one-sample and two-sample studies")
    return (f"the study table holds {what}, so its directions are the sign of the pooled effect "
            "(positive, negative), not the patient-control contrast of the published Table 3")


# --------------------------------------------------------------------------------------------
# tables


def compare_with_published(table3: pd.DataFrame, published: pd.DataFrame, maps: dict, space,
                           inputs_statement: str, egger_at_published=None) -> pd.DataFrame:
    """Each published cluster beside the nearest reproduced cluster peak of the same direction.

    Parameters
    ----------
    table3 : DataFrame
        Reproduced Table 3 (cluster peaks).
    published : DataFrame
        Published Table 3.
    maps : dict
        Reproduced maps (``z``, ``g``) to read at the published coordinates.
    space : MaskSpace
        Their voxel space.
    inputs_statement : str
        Provenance of the inputs, repeated on every row.
    egger_at_published : array, optional
        Reproduced Egger p at each published peak (NaN outside the mask).

    Returns
    -------
    DataFrame
        One row per published cluster; ``distance_mm`` is NaN when no reproduced cluster of that
        direction exists.
    """
    rows = []
    pub_xyz = published[["x", "y", "z"]].to_numpy(float)
    vox = space.voxel_index(pub_xyz)
    z = np.asarray(maps["z"], float)
    g = np.asarray(maps["g"], float)
    for i, pub in published.reset_index(drop=True).iterrows():
        cand = table3[table3["direction"] == pub["direction"]]
        row = {"direction": pub["direction"], "published_region": pub["region"],
               "published_aal_label": pub["aal_label"],
               "published_printed_region": pub.get("printed_region", pub["region"])}
        for c in ("x", "y", "z"):
            row[f"published_{c}"] = int(pub[c])
        if len(cand):
            d = np.linalg.norm(cand[["x", "y", "z"]].to_numpy(float) - pub_xyz[i], axis=1)
            j = int(np.argmin(d))
            rep = cand.iloc[j]
            row.update({"reproduced_x": int(rep["x"]), "reproduced_y": int(rep["y"]),
                        "reproduced_z": int(rep["z"]), "distance_mm": round(float(d[j]), 3),
                        "reproduced_aal_label": rep["aal_label"],
                        "same_aal_label": bool(rep["aal_label"] == pub["aal_label"])})
        else:
            row.update({"reproduced_x": np.nan, "reproduced_y": np.nan, "reproduced_z": np.nan,
                        "distance_mm": np.nan, "reproduced_aal_label": "no cluster",
                        "same_aal_label": False})
        for col in ("cluster_voxels", "sdm_z", "p_voxel", "hedges_g", "i2", "egger_p"):
            row[f"published_{col}"] = pub[col]
            row[f"reproduced_{col}"] = rep[col] if len(cand) else np.nan
        inside = vox[i] >= 0
        row["reproduced_z_at_published_peak"] = float(z[vox[i]]) if inside else np.nan
        row["reproduced_g_at_published_peak"] = float(g[vox[i]]) if inside else np.nan
        row["reproduced_i2_at_published_peak"] = (float(np.asarray(maps["i2"])[vox[i]])
                                                  if inside else np.nan)
        row["reproduced_egger_p_at_published_peak"] = (
            float(egger_at_published[i]) if egger_at_published is not None else np.nan)
        row["inputs"] = inputs_statement
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# the report of one fitted model


def egger_at(result, dataset, voxels: np.ndarray) -> np.ndarray:
    """Two-tailed Egger test p at the given voxels (Rubin-pooled over the imputations).

    Uses :func:`analysis.sdm.diagnostics.egger.egger_test` on ``result.imputations[:, :, voxels]``.
    """
    voxels = np.asarray(voxels, dtype=np.int64)
    if len(voxels) == 0:
        return np.zeros(0)
    from analysis.sdm.diagnostics.egger import egger_test

    imputed = np.asarray(result.imputations)[:, :, voxels]
    _, n1, n2 = study_info(result, dataset)
    return np.asarray(egger_test(imputed, n1, n2)["p"], dtype=float)


def study_info(result, dataset) -> tuple[list, np.ndarray, np.ndarray]:
    """Study ids, n1 and n2 in the order of ``result.imputations``' study axis.

    Taken from the result (``studies``, ``n1``, ``n2``) when it has them, else from the dataset.
    """
    if getattr(result, "n1", None) is not None:
        return list(result.studies), np.asarray(result.n1, float), np.asarray(result.n2, float)
    st = dataset.studies
    return list(st["study"]), st["n1"].to_numpy(float), st["n2"].to_numpy(float)


def draw_figures(result, dataset, clusters, table3: pd.DataFrame, provenance: dict,
                 out: Callable[[str], Path], published: pd.DataFrame | None = None) -> None:
    """Figure 2 (PNG and SVG) and one funnel plot per cluster peak.

    Parameters
    ----------
    result : MetaResult-like
        Fitted model (``.space``, ``.imputations``).
    dataset : SDMDataset
        Studies (``n1``, ``n2``, names).
    clusters : ClusterResult
        Thresholded map.
    table3 : DataFrame
        Cluster peaks with ``voxel``, ``hedges_g`` and ``egger_p``.
    provenance : dict
        Output of :func:`input_provenance`.
    out : callable
        ``relpath -> Path``.
    published : DataFrame, optional
        Published Table 3 (optionally with ``reproduced_egger_p_at_published_peak``): a
        direction without any reproduced cluster is drawn unthresholded at the published peaks
        (labelled so), and a funnel plot of the reproduced data is drawn at every published
        peak (``figures/funnel_published_<n>.png``).
    """
    import matplotlib.pyplot as plt

    from analysis.figures.figure2 import plot_figure2
    from analysis.figures.funnel import funnel_plot

    space = result.space
    simulated = bool(provenance["simulated"])
    note = (f"Simulated stand-in data: {provenance['statement']}. Not the paper's result."
            if simulated else None)
    fig = plot_figure2(clusters, space, simulated_note=note, published=published)
    save_figure(fig, out("figures/figure2.png"), dpi=300)
    save_figure(fig, out("figures/figure2.svg"))
    plt.close(fig)
    names, n1, n2 = study_info(result, dataset)
    imputed = np.asarray(result.imputations)
    for c, pk in table3.iterrows():
        title = f"Cluster {c + 1}: {pk['region']} ({pk['x']}, {pk['y']}, {pk['z']})"
        if simulated:
            title += " [simulated inputs]"
        f = funnel_plot(imputed[:, :, int(pk["voxel"])], n1, n2, pooled_g=pk["hedges_g"],
                        egger_p=pk["egger_p"], title=title,
                        study_names=names)
        save_figure(f, out(f"figures/funnel_{c + 1}.png"))
        plt.close(f)
    draw_funnels(result, names, n1, n2, imputed, table3, published, simulated, out)
    if published is None:
        return
    pub_vox = space.voxel_index(published[["x", "y", "z"]].to_numpy(float))
    for i, pub in published.reset_index(drop=True).iterrows():
        if pub_vox[i] < 0:
            continue
        title = (f"Published peak {i + 1}: {pub['aal_label']} ({pub['x']}, {pub['y']}, "
                 f"{pub['z']}), reproduced data")
        if simulated:
            title += " [simulated inputs]"
        pooled = float(result.maps["g"][pub_vox[i]])
        egger_p = pub.get("reproduced_egger_p_at_published_peak", np.nan)
        f = funnel_plot(imputed[:, :, int(pub_vox[i])], n1, n2, pooled_g=pooled,
                        egger_p=egger_p, title=title, study_names=names)
        save_figure(f, out(f"figures/funnel_published_{i + 1}.png"))
        plt.close(f)


def draw_funnels(result, names, n1, n2, imputed, table3: pd.DataFrame,
                 published: pd.DataFrame | None, simulated: bool,
                 out: Callable[[str], Path]) -> None:
    """``figures/funnels.{png,svg}``: the funnel plot of every cluster peak in one figure.

    Without any cluster, the funnel plots of the reproduced data at the published peaks are
    shown instead, and their titles say so.
    """
    from analysis.figures.funnel import plot_funnels

    panels = []
    for c, pk in table3.iterrows():
        panels.append({"g_imputed": imputed[:, :, int(pk["voxel"])], "n1": n1, "n2": n2,
                       "pooled_g": pk["hedges_g"], "egger_p": pk["egger_p"],
                       "study_names": names,
                       "title": f"Cluster {c + 1}: {pk['region']} ({pk['x']}, {pk['y']}, "
                                f"{pk['z']})"})
    if not panels and published is not None:
        vox = result.space.voxel_index(published[["x", "y", "z"]].to_numpy(float))
        for i, pub in published.reset_index(drop=True).iterrows():
            if vox[i] < 0:
                continue
            panels.append({"g_imputed": imputed[:, :, int(vox[i])], "n1": n1, "n2": n2,
                           "pooled_g": float(result.maps["g"][vox[i]]),
                           "egger_p": pub.get("reproduced_egger_p_at_published_peak", np.nan),
                           "study_names": names,
                           "title": f"No cluster; published peak {i + 1}: {pub['aal_label']} "
                                    f"({pub['x']}, {pub['y']}, {pub['z']})"})
    _save_panel_figure(plot_funnels, panels, "funnel", simulated, out)


def _save_panel_figure(plot, panels: list, kind: str, simulated: bool, out) -> None:
    """``figures/<kind>s.png`` (300 dpi) and ``.svg`` of ``plot(panels, note=...)``, the note
    saying that the inputs are simulated stand-ins, or that there is no panel to draw.
    """
    import matplotlib.pyplot as plt

    note = "Simulated stand-in inputs: not the paper's data." if simulated else None
    if not panels:  # no cluster, and no published peak to look at in data of this design
        note = " ".join(x for x in ("No cluster survived the thresholds: there is no "
                                    f"{kind} plot to draw.", note) if x)
    fig = plot(panels, note=note)
    save_figure(fig, out(f"figures/{kind}s.png"), dpi=300)
    save_figure(fig, out(f"figures/{kind}s.svg"))
    plt.close(fig)


#: columns of ``tables/forest_peaks.tsv``: the cluster, then the extract's tidy table
FOREST_COLUMNS = ["cluster", *FRAME_COLUMNS]


def extract_at_peaks(result, dataset, table3: pd.DataFrame, config: dict) -> dict:
    """SDM-PSI's extract at every cluster peak of ``table3`` from the fit's own imputations.

    Parameters
    ----------
    result : MetaResult-like
        ``.imputations`` (m x k x V), ``.space``; ``.bounds``, ``.X``, ``.C`` and ``.params``
        when it is a :class:`~analysis.sdm.estimator.MetaResult`.
    dataset : SDMDataset
        The studies (sample sizes when the result does not carry them).
    table3 : DataFrame
        Cluster peaks with ``voxel``.
    config : dict
        Configuration (``sdm.heterogeneity`` when the result does not record it).

    Returns
    -------
    dict
        Cluster number (1-based) -> :class:`~analysis.sdm.diagnostics.voxel.VoxelExtract`.
    """
    from analysis.sdm.diagnostics.voxel import extract_voxel

    names, n1, n2 = study_info(result, dataset)
    imputed = np.asarray(result.imputations)
    bounds = getattr(result, "bounds", None)
    method = getattr(result, "params", {}).get("heterogeneity", config["sdm"]["heterogeneity"])
    out = {}
    for c, pk in table3.iterrows():
        v = int(pk["voxel"])
        lo = up = None
        if bounds is not None:
            lo, up = bounds.lower[:, v], bounds.upper[:, v]
        out[c + 1] = extract_voxel(
            imputed[:, :, v], n1, n2, studies=names, X=getattr(result, "X", None),
            C=getattr(result, "C", None), lower=lo, upper=up, heterogeneity=method,
            xyz=(int(pk["x"]), int(pk["y"]), int(pk["z"])), voxel=v)
    return out


def draw_forests(forest: dict, table3: pd.DataFrame, dataset, config: dict, provenance: dict,
                 out: Callable[[str], Path]) -> None:
    """``figures/forest_<cluster>.png`` and ``figures/forests.{png,svg}`` (all clusters).

    Studies are coloured by the study-table column ``sdm.robustness.jackknife_group`` (the
    disorder) when the table has it, and the studies with simulated stand-in peaks (provenance
    ``simulated:``, :func:`input_provenance`) are marked.
    """
    import matplotlib.pyplot as plt

    from analysis.figures.forest import forest_plot, group_colours, plot_forests

    col = config["sdm"]["robustness"]["jackknife_group"]
    table = dataset.studies.set_index("study")
    simulated = set(provenance["simulated"])
    panels = []
    for c, ex in forest.items():
        st = ex.studies.assign(simulated=ex.studies["study"].isin(simulated))
        if col in table.columns:
            st["group"] = table.reindex(st["study"])[col].fillna("not given").astype(str).values
        pk = table3.iloc[c - 1]
        panels.append({"studies": st, "pooled": ex.pooled,
                       "title": f"Cluster {c}: {pk['region']}\n({pk['x']}, {pk['y']}, "
                                f"{pk['z']})"})
    colours = group_colours([g for p in panels for g in p["studies"].get("group", [])]
                            or ["study"])
    for c, panel in zip(forest, panels, strict=True):
        f = forest_plot(colours=colours, **panel)
        save_figure(f, out(f"figures/forest_{c}.png"))
        plt.close(f)
    _save_panel_figure(plot_forests, panels, "forest", simulated, out)


def report(result, dataset, published: pd.DataFrame | None, out: Callable[[str], Path], *,
           config: dict, provenance: dict, imputations: int,
           egger: Callable | None = None, figures: bool = True) -> dict:
    """Write the maps, tables and figures of one fitted mean model; return the cited values.

    Parameters
    ----------
    result : MetaResult-like
        ``.maps`` (dict of vectors: at least ``g, var, z, tau2, i2, p``), ``.space``
        (:class:`~analysis.sdm.maps.space.MaskSpace`) and ``.imputations`` (m x k x V imputed g).
    dataset : SDMDataset
        The studies (order of ``result.imputations``' second axis) with ``n1, n2``.
    published : DataFrame or None
        Published Table 3; None when the data cannot be compared with it
        (:func:`published_comparison_skipped`): no ``tables/table3_vs_published.tsv``, no
        published peaks in the figures, the reason in the values (``skipped``).
    out : callable
        ``relpath -> Path`` where to write (``ctx.out``).
    config : dict
        Configuration (thresholds from ``sdm.threshold``).
    provenance : dict
        Output of :func:`input_provenance`.
    imputations : int
        Number of imputations used.
    egger : callable, optional
        ``(result, dataset, voxels) -> p`` (default :func:`egger_at`).
    figures : bool
        Whether to draw Figure 2 and the funnel plots.

    Returns
    -------
    dict
        Values for ``results/values.json``.
    """
    space = result.space
    maps = result.maps
    for name in MAP_NAMES:
        save_nifti(out(f"maps/{name}.nii.gz"), space.to_img(maps[name]))
    studies = dataset.studies
    increase, decrease = direction_labels(studies["n2"])
    clusters = threshold_clusters(maps["z"], space, labeler=aal_labeler,
                                  directions=(increase, decrease),
                                  **params.threshold_params(config))
    save_nifti(out("maps/z_thresholded.nii.gz"), space.to_img(clusters.thresholded_z))
    lab_img = space.to_img(clusters.labels)
    lab_img.set_data_dtype(np.int16)
    save_nifti(out("maps/clusters.nii.gz"), lab_img)

    egger = egger or egger_at
    peaks = values_at_peaks(clusters.table, {"hedges_g": maps["g"], "i2": maps["i2"]})
    peaks["egger_p"] = egger(result, dataset, peaks["voxel"].to_numpy(np.int64))
    table3 = peaks[peaks["peak_type"] == "cluster"].reset_index(drop=True)
    write_tsv(out("tables/table3.tsv"), table3[TABLE3_COLUMNS], float_format="%.6g")
    write_tsv(out("tables/table3_peaks.tsv"),
              peaks[["cluster", "peak_type"] + TABLE3_COLUMNS], float_format="%.6g")
    breakdown = [cluster_breakdown(clusters.labels == c, space, "aal").assign(cluster=c)
                 for c in table3.index + 1]
    bd = (pd.concat(breakdown, ignore_index=True) if breakdown
          else pd.DataFrame(columns=["label", "voxels", "percent", "cluster"]))
    write_tsv(out("tables/table3_breakdown.tsv"), bd[["cluster", "label", "voxels", "percent"]])
    skipped: dict[str, str] = {}
    if published is not None:
        pub_vox = space.voxel_index(published[["x", "y", "z"]].to_numpy(float))
        egger_pub = np.full(len(published), np.nan)
        egger_pub[pub_vox >= 0] = egger(result, dataset, pub_vox[pub_vox >= 0])
        comparison = compare_with_published(table3, published, maps, space,
                                            provenance["statement"], egger_pub)
        write_tsv(out("tables/table3_vs_published.tsv"), comparison, float_format="%.6g")
        published = published.assign(reproduced_egger_p_at_published_peak=egger_pub)
    else:
        comparison = None
        reason = published_comparison_skipped(studies) or "no published Table 3"
        skipped["tables/table3_vs_published.tsv"] = reason
        LGR.info("meta: no comparison with the published Table 3: %s", reason)

    forest = extract_at_peaks(result, dataset, table3, config)
    write_tsv(out("tables/forest_peaks.tsv"), pd.concat(
        [e.to_frame().assign(cluster=c) for c, e in forest.items()], ignore_index=True
    ).reindex(columns=FOREST_COLUMNS) if forest else pd.DataFrame(columns=FOREST_COLUMNS),
        float_format="%.6g")
    if figures:
        draw_figures(result, dataset, clusters, table3, provenance, out, published)
        draw_forests(forest, table3, dataset, config, provenance, out)

    clusters_values = [
        {"cluster": c + 1, "direction": r["direction"], "region": r["region"],
         "aal_label": r["aal_label"], "x": int(r["x"]), "y": int(r["y"]), "z": int(r["z"]),
         "voxels": int(r["cluster_voxels"]), "sdm_z": round(float(r["sdm_z"]), 3),
         "p": float(f"{r['p_voxel']:.3g}"), "hedges_g": round(float(r["hedges_g"]), 3),
         "i2": round(float(r["i2"]), 3), "egger_p": round(float(r["egger_p"]), 3)}
        for c, r in table3.iterrows()
    ]
    return {
        "imputations": int(imputations),
        "imputations_configured": int(config["sdm"]["imputations"]),
        "parameters": {"fwhm_mm": config["sdm"]["fwhm_mm"],
                       "voxel_mm": int(VOXEL_MM) if VOXEL_MM.is_integer() else VOXEL_MM,
                       "p_uncorrected": float(config["sdm"]["threshold"]["p_uncorrected"]),
                       "min_cluster_voxels": int(config["sdm"]["threshold"]["min_cluster_voxels"]),
                       "peak_z": float(config["sdm"]["threshold"]["peak_z"]),
                       "seed": int(config["seed"])},
        **provenance_values(provenance),
        "design": study_design(studies),
        "directions": {"increase": increase, "decrease": decrease},
        "n_clusters_increase": clusters.n_clusters(increase),
        "n_clusters_decrease": clusters.n_clusters(decrease),
        # Figure 2 (analysis.figures.figure2) draws only the thresholded clusters, or a glass
        # brain with the published peaks when a direction has none
        "figure2_thresholded": True,
        "clusters": clusters_values,
        "threshold": clusters.params,
        "published_matched_within_10mm": (
            None if comparison is None else int((comparison["distance_mm"] <= 10).sum())),
        "at_published_peaks": [] if comparison is None else [
            {"x": int(r["published_x"]), "y": int(r["published_y"]), "z": int(r["published_z"]),
             "sdm_z": round(float(r["reproduced_z_at_published_peak"]), 3),
             "hedges_g": round(float(r["reproduced_g_at_published_peak"]), 3),
             "egger_p": round(float(r["reproduced_egger_p_at_published_peak"]), 3)}
            for _, r in comparison.iterrows()
            if np.isfinite(r["reproduced_z_at_published_peak"])],
        # analyses left out for these data, each with the reason (artefact -> reason)
        "skipped": skipped,
        # the study-table column that colours the forest plots (None: the table has none)
        "forest_group_column": (config["sdm"]["robustness"]["jackknife_group"]
                                if config["sdm"]["robustness"]["jackknife_group"]
                                in studies.columns else None),
        "n_voxels": int(space.n_voxels),
        "heterogeneity_estimator": HETEROGENEITY_NAMES[getattr(result, "params", {}).get(
            "heterogeneity", config["sdm"]["heterogeneity"])],
        "analysis_mask": MASK_DESCRIPTIONS[config["sdm"]["mask"]],
    }


# --------------------------------------------------------------------------------------------
# the stage


#: what stage ``robustness`` reuses of this stage's fit: the bound maps and the fit's seed
FIT_FILE = "intermediate/meta_fit.npz"


def fit_mean_model(dataset, config: dict, imputations: int, seed: int):
    """Fit the SDM-PSI mean model with the configured pre-processing and estimator."""
    est = params.estimator(config, imputations, seed, progress=True)
    return est.fit(dataset, *params.masks(config))


def save_fit(path, result, seed: int) -> None:
    """Write what re-fits need (:func:`load_fit`): bound maps, sample sizes, study ids, seed."""
    from analysis.sdm.inputs.io import atomic_path

    b = result.bounds
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, studies=np.asarray(b.studies, dtype=str), lower=b.lower,
                            upper=b.upper, g_thr=b.g_thr, n1=b.n1, n2=b.n2,
                            seed=np.int64(seed), imputations=np.int64(result.params["imputations"]))


def load_fit(path, space) -> tuple:
    """``(bounds, seed, imputations)`` written by :func:`save_fit`, on ``space``."""
    from analysis.sdm.maps.preprocess import Bounds

    with np.load(path) as z:
        bounds = Bounds(list(z["studies"]), z["lower"], z["upper"], z["g_thr"], z["n1"],
                        z["n2"], space)
        if bounds.lower.shape[1] != space.n_voxels:
            raise DataError(path, f"bound maps over {bounds.lower.shape[1]} voxels, the analysis "
                            f"mask has {space.n_voxels}")
        return bounds, int(z["seed"]), int(z["imputations"])


def produce(ctx) -> dict:
    """Stage ``meta``: mean analysis of ``data/``, Table 3, Figure 2, funnel plots."""
    dataset = params.compendium_dataset(ctx.data_dir, ctx.config)
    cfg = ctx.config["sdm"]
    n_imp = int(cfg["imputations_quick"] if ctx.quick else cfg["imputations"])
    # one name per coordinate (analysis.labels.peak_labels); the paper's names stay as
    # printed_region / printed_aal_label. Data of another design are not compared with it.
    published = (relabel_peaks(load_published_table3(ctx.data_dir))
                 if published_comparison_skipped(dataset.studies) is None else None)
    provenance = input_provenance(dataset)
    LGR.info("meta: %d studies (%s), %d imputations", len(dataset.studies),
             provenance["statement"], n_imp)
    seed = int(ctx.rng("fit").integers(2**31 - 1))
    result = fit_mean_model(dataset, ctx.config, n_imp, seed)
    save_fit(ctx.out(FIT_FILE), result, seed)
    return report(result, dataset, published, ctx.out, config=ctx.config,
                  provenance=provenance, imputations=n_imp)
