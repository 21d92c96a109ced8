"""What the manuscript may cite, and where each cited thing comes from.

The manuscript (``manuscript/index.qmd``) is a thin consumer: it loads only ``results/values.json``
and the files the pipeline stages wrote. This module is the single place that says

* which pipeline stage produces each figure and table the manuscript shows
  (:data:`ARTEFACTS`, label -> (stage, path under ``results/``)),
* which stage value each number in the prose is (:data:`VALUES`, name -> ``"stage.key"``; names
  starting with ``config.`` are parameters of ``analysis/config.yaml``),
* how many studies' peaks are real and how many are simulated stand-ins
  (:func:`provenance`, computed from ``data/peaks.tsv``), so that results computed on stand-ins
  are never presented as the paper's findings.

Tests (``tests/test_manuscript.py``) check that every label and value the manuscript uses is
declared here, that each declared file is written by exactly one stage and that each value
resolves in a real ``values.json``. Set ``PAINEMP_ALLOW_MISSING=1`` to render with visible
placeholders while a stage is still being developed (never for a release).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import paths
from analysis.sdm.peaks import REAL_PREFIXES, SIMULATED_PREFIX  # noqa: F401 (provenance prefixes)

LGR = logging.getLogger(__name__)

#: Cross-reference label (or resource name) -> (producing stage, path under results/).
ARTEFACTS: dict[str, tuple[str, str]] = {
    "fig-prisma": ("figure1", "figures/figure1.png"),
    "fig-meta": ("meta", "figures/figure2.png"),
    "fig-network": ("characterisation", "figures/figure3.png"),
    "fig-behaviour": ("characterisation", "figures/figure4.png"),
    "tbl-demographics": ("tables", "tables/table1.tsv"),
    "tbl-data": ("tables", "tables/table2.tsv"),
    "tbl-results": ("meta", "tables/table3.tsv"),
    "tbl-reproduction": ("meta", "tables/table3_vs_published.tsv"),
    "tbl-jackknife": ("robustness", "tables/jackknife_summary.tsv"),
    "tbl-metaregression": ("robustness", "tables/metaregression.tsv"),
    "tbl-networks": ("characterisation", "tables/network_overlap.tsv"),
    "tbl-terms": ("characterisation", "tables/top_terms.tsv"),
    "map-z": ("meta", "maps/z.nii.gz"),  # interactive viewer (HTML only)
    # What can be checked without the coordinates (stage design, analysis/stages/design.py)
    "tbl-table3-checks": ("design", "tables/table3_checks.tsv"),
    "tbl-design-fwe": ("design", "tables/design_published_peaks.tsv"),
    "tbl-design-sensitivity": ("design", "tables/design_sensitivity.tsv"),
    "fig-design-sensitivity": ("design", "figures/design_sensitivity.png"),
}

#: Name used in the manuscript -> "stage.key" in values.json (stages record the parameters they used).
#: The test ``test_every_value_resolves`` lists any name that does not resolve.
VALUES: dict[str, str] = {
    # Figure 1 (stage figure1, analysis/stages/figure1.py)
    "prisma_included": "figure1.n_included",
    "prisma_databases": "figure1.databases",
    "prisma_search_end": "figure1.search_end",
    "prisma_counts_not_reported": "figure1.n_counts_not_reported",
    # Tables 1-2 and the sample (stage tables, analysis/stages/tables.py)
    "n_studies": "tables.n_studies",
    "n_patients": "tables.n_patients",
    "n_controls": "tables.n_controls",
    "n_total": "tables.n_total",
    "age_mean": "tables.age_mean",
    "age_sd": "tables.age_sd",
    "n_peaks": "tables.n_peaks",
    "n_peaks_published": "tables.n_peaks_published",
    "n_patients_published": "tables.n_patients_published",
    "n_controls_published": "tables.n_controls_published",
    "age_mean_published": "tables.age_mean_published",
    "age_sd_published": "tables.age_sd_published",
    "agesd_t": "tables.age_sd_ttest_t",
    "agesd_df": "tables.age_sd_ttest_df",
    "agesd_p": "tables.age_sd_ttest_p",
    "agesd_t_published": "tables.age_sd_ttest_t_published",
    "agesd_df_published": "tables.age_sd_ttest_df_published",
    "agesd_p_published": "tables.age_sd_ttest_p_published",
    "agesd_p_from_published_t": "tables.age_sd_ttest_p_from_published_t",
    "agesd_zero_t": "tables.age_sd_ttest_missing_as_zero.t",
    "agesd_zero_df": "tables.age_sd_ttest_missing_as_zero.df",
    "agesd_zero_levene_f": "tables.age_sd_ttest_missing_as_zero.levene_F",
    "agesd_zero_levene_p": "tables.age_sd_ttest_missing_as_zero.levene_p",
    "n_peaks_real": "tables.n_peaks_real",
    "n_peaks_simulated": "tables.n_peaks_simulated",
    "age_definition": "tables.age_definition",
    # SDM-PSI mean analysis (stage meta, analysis/stages/meta.py)
    "n_clusters_increase": "meta.n_clusters_increase",
    "n_clusters_decrease": "meta.n_clusters_decrease",
    "n_published_recovered": "meta.published_matched_within_10mm",
    "imputations": "meta.imputations",
    "heterogeneity_estimator": "meta.heterogeneity_estimator",
    "analysis_mask": "meta.analysis_mask",
    "n_voxels": "meta.n_voxels",
    # Robustness (stage robustness, analysis/stages/robustness.py)
    "permutations": "robustness.permutations",
    "metaregression_any_significant": "robustness.metaregression_any_p_below_0_05",
    "metaregression_min_p": "robustness.metaregression_min_p",
    "n_clusters_fwe_voxel": "robustness.n_clusters_fwe_voxel",
    "n_clusters_fwe_tfce": "robustness.n_clusters_fwe_tfce",
    # Characterisation (stage characterisation, published peaks)
    "dmn_share_increase": "characterisation.published.overlap_increase.dmn_share",
    "dmn_share_decrease": "characterisation.published.overlap_decrease.dmn_share",
    "macm_studies_acc": "characterisation.published.seeds.P1.n_studies_6mm",
    "macm_studies_mtg": "characterisation.published.seeds.P2.n_studies_6mm",
    "n_top_terms": "characterisation.parameters.top_terms",
    # Checks without the coordinates (stage design, analysis/stages/design.py)
    "design_t3_n_checks": "design.table3_checks.n_checks",
    "design_t3_consistent": "design.table3_checks.consistent",
    "design_t3_inconsistent": "design.table3_checks.inconsistent",
    "design_t3_not_checkable": "design.table3_checks.not_checkable",
    "design_null_replicates": "design.null.replicates",
    "design_null_imputations": "design.null.imputations",
    "design_null_voxels": "design.null.n_voxels",
    "design_null_whole_mask": "design.null.whole_mask",
    "design_alpha": "design.null.alpha",
    "design_confidence": "design.null.confidence",
    "design_fwe_increase": "design.null.increase",
    "design_fwe_decrease": "design.null.decrease",
    "design_paper_fwer": "design.paper_threshold_fwer.either",
    "design_published": "design.published",
    "design_psi_permutations": "design.psi_standin_permutations",
    "design_sens_replicates": "design.sensitivity.replicates",
    "design_sens_radius": "design.sensitivity.roi_radius_mm",
    "design_sens_voxels": "design.sensitivity.n_voxels",
    "design_match_mm": "design.sensitivity.match_distance_mm",
    "design_sens_locations": "design.sensitivity.locations",
    # Parameters (analysis/config.yaml)
    "fwhm_mm": "meta.parameters.fwhm_mm",
    "voxel_mm": "meta.parameters.voxel_mm",
    "p_threshold": "meta.parameters.p_uncorrected",
    "min_cluster_voxels": "meta.parameters.min_cluster_voxels",
    "peak_z": "meta.parameters.peak_z",
    "imputations_config": "meta.imputations_configured",
    "permutations_config": "robustness.permutations_configured",
    "rsfc_r_threshold": "characterisation.parameters.rsfc_r_threshold",
    "macm_radius_mm": "characterisation.parameters.macm_radius_mm",
    "seed": "meta.parameters.seed",
}



class MissingArtefact(LookupError):
    """A figure, table or value the manuscript needs was not produced."""


def allow_missing() -> bool:
    """Whether missing artefacts render as visible placeholders (development only)."""
    return os.environ.get("PAINEMP_ALLOW_MISSING", "") not in ("", "0", "false")


def _dig(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


class Values:
    """Read-only access to ``values.json`` by manuscript name.

    ``v["n_studies"]`` looks up :data:`VALUES`; a dotted ``"stage.key"`` works too.

    Parameters
    ----------
    results_dir : path-like, optional
        Defaults to :func:`analysis.paths.results_dir`.
    """

    def __init__(self, results_dir: str | Path | None = None):
        self.results_dir = Path(results_dir or paths.results_dir())
        path = self.results_dir / "values.json"
        self.raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.missing: list[str] = []

    def path_of(self, name: str) -> str:
        """The ``stage.key`` a manuscript name stands for."""
        return VALUES.get(name, name)

    def get(self, name: str) -> Any:
        """The value, or raise :class:`MissingArtefact` naming the stage to run."""
        dotted = self.path_of(name)
        try:
            return _dig(self.raw, dotted)
        except KeyError:
            stage = dotted.split(".")[0]
            raise MissingArtefact(
                f"value {name!r} ({dotted}) is not in {self.results_dir / 'values.json'}; "
                f"run `python -m analysis run` (stage {stage!r})") from None

    def __getitem__(self, name: str) -> Any:
        try:
            return self.get(name)
        except MissingArtefact:
            if not allow_missing():
                raise
            self.missing.append(name)
            return f"[missing: {self.path_of(name)}]"

    def fmt(self, name: str, spec: str = "") -> str:
        """The value formatted with ``spec`` (placeholders pass through unformatted)."""
        value = self[name]
        if isinstance(value, str) or spec == "":
            return str(value)
        return format(value, spec)

    def has(self, name: str) -> bool:
        try:
            self.get(name)
        except MissingArtefact:
            return False
        return True


def fmt_p(p: float) -> str:
    """A p-value as text: three significant digits, or ``< 0.001``."""
    if isinstance(p, str):
        return p  # a placeholder or text already formatted
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "NA"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def artefact_path(label: str, results_dir: str | Path | None = None) -> Path:
    """Path of the file behind a label of :data:`ARTEFACTS`."""
    if label not in ARTEFACTS:
        raise KeyError(f"{label!r} is not declared in analysis.manuscript_values.ARTEFACTS")
    return Path(results_dir or paths.results_dir()) / ARTEFACTS[label][1]


def _missing_note(label: str, path: Path):
    from IPython.display import Markdown

    stage = ARTEFACTS[label][0]
    msg = f"{path} (label {label}, stage {stage!r}) does not exist; run `python -m analysis run`"
    if not allow_missing():
        raise MissingArtefact(msg)
    LGR.warning("missing artefact: %s", msg)
    return Markdown(f"**[missing artefact: {ARTEFACTS[label][1]} from stage {stage}]**")


def figure(label: str, results_dir: str | Path | None = None):
    """The figure file of ``label`` for display in a code cell (an IPython ``Image``)."""
    from IPython.display import Image

    path = artefact_path(label, results_dir)
    if not path.exists():
        return _missing_note(label, path)
    return Image(filename=str(path))


def read_table(label: str, results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """The TSV of ``label`` as a DataFrame (``None`` when missing and placeholders allowed)."""
    path = artefact_path(label, results_dir)
    if not path.exists():
        _missing_note(label, path)
        return None
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


def md_table(df: pd.DataFrame, floatfmt: str = ".3g", index: bool = False) -> str:
    """A pipe table in Markdown (works for Quarto's HTML and Typst and the fallback)."""
    if index:
        df = df.reset_index()

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


def table(label: str, columns: dict[str, str] | None = None, floatfmt: str = ".3g",
          results_dir: str | Path | None = None, query: str | None = None,
          empty: str = "No rows."):
    """The table of ``label`` as Markdown for display in a code cell.

    Parameters
    ----------
    label : str
        A ``tbl-`` label of :data:`ARTEFACTS`.
    columns : dict, optional
        Columns to show (in order) and their headers; all columns when omitted.
    floatfmt : str
        Format of floating-point cells.
    query : str, optional
        A :meth:`pandas.DataFrame.query` selecting the rows to show.
    empty : str
        Text shown instead of a table without rows.
    """
    from IPython.display import Markdown

    df = read_table(label, results_dir)
    if df is None:
        return _missing_note(label, artefact_path(label, results_dir))
    if query:
        df = df.query(query)
    if df.empty:
        return Markdown(f"*{empty}*")
    if columns:
        keep = [c for c in columns if c in df.columns]
        df = df[keep].rename(columns=columns)
    return Markdown(md_table(df, floatfmt=floatfmt))


def terms_table(label: str = "tbl-terms", seed_set: str = "published", n: int | None = None,
                results_dir: str | Path | None = None):
    """Top terms per seed side by side (rank x seed, "term (p)"), from the characterisation.

    Parameters
    ----------
    label : str
        The label of the top-terms table in :data:`ARTEFACTS`.
    seed_set : str
        Which seeds: ``"published"`` (the paper's peaks) or ``"meta"`` (our clusters).
    n : int, optional
        Number of ranks shown (default: every rank the stage wrote).
    """
    from IPython.display import Markdown

    df = read_table(label, results_dir)
    if df is None:
        return _missing_note(label, artefact_path(label, results_dir))
    if "set" in df.columns:
        df = df[df["set"] == seed_set]
    if "source" in df.columns and len(df):
        df = df[df["source"] == df["source"].iloc[0]]
    if df.empty:
        return Markdown(f"*No terms for the {seed_set} seeds.*")
    if n is not None:
        df = df[df["rank"] <= n]
    cells = df["term"].astype(str) + " (" + df["p"].map(fmt_p) + ")"
    wide = (df.assign(cell=cells).pivot(index="rank", columns="seed", values="cell")
            .reset_index().rename(columns={"rank": "Rank"}))
    if "aal2_region" in df.columns:
        regions = df.groupby("seed")["aal2_region"].first()
        wide = wide.rename(columns={s: f"{s} ({regions[s]})" for s in regions.index})
    return Markdown(md_table(wide))


@dataclass
class Provenance:
    """Which studies' peaks are the authors' real coordinates, stand-ins, or missing.

    Every study of ``data/studies.tsv`` is in exactly one of ``real_studies``,
    ``simulated_studies`` and ``no_peak_studies``.
    """

    real_studies: list[str] = field(default_factory=list)
    simulated_studies: list[str] = field(default_factory=list)
    n_peaks_real: int = 0
    n_peaks_simulated: int = 0
    no_peak_studies: list[str] = field(default_factory=list)

    @property
    def all_real(self) -> bool:
        return (not self.simulated_studies and not self.no_peak_studies
                and self.n_peaks_simulated == 0 and bool(self.real_studies))

    @property
    def n_studies_real(self) -> int:
        return len(self.real_studies)

    @property
    def n_studies_simulated(self) -> int:
        return len(self.simulated_studies)

    @property
    def n_studies_no_peaks(self) -> int:
        return len(self.no_peak_studies)

    @property
    def n_studies(self) -> int:
        """All studies of the study table."""
        return self.n_studies_real + self.n_studies_simulated + self.n_studies_no_peaks


def provenance(data_dir: str | Path | None = None) -> Provenance:
    """Classify every study of ``data/studies.tsv`` by the provenance of its ``peaks.tsv`` rows.

    :func:`analysis.sdm.peaks.classify_provenance`: a study counts as simulated when any of its
    peak rows is a simulated stand-in (``provenance`` starting with ``simulated:``), as real
    when all its rows start with ``original:`` (transcribed from a publication) or
    ``sdm-import:`` (imported from the authors' SDM project), and as without peaks when it has
    no peak row at all.

    Raises
    ------
    analysis.errors.DataError
        When a file or its ``study`` / ``provenance`` column is missing, or a row has another
        prefix.
    """
    from analysis.sdm.io import read_tsv_text
    from analysis.sdm.peaks import PEAKS_FILE, classify_provenance
    from analysis.sdm.studies import STUDIES_FILE

    ddir = Path(data_dir or paths.data_dir())
    studies = read_tsv_text(ddir / STUDIES_FILE, required=["study"])
    peaks = read_tsv_text(ddir / PEAKS_FILE, required=["study", "provenance"])
    v = classify_provenance(studies["study"], peaks["study"], peaks["provenance"], PEAKS_FILE)
    return Provenance(real_studies=sorted(v.real), simulated_studies=sorted(v.simulated),
                      n_peaks_real=v.n_peaks_real, n_peaks_simulated=v.n_peaks_simulated,
                      no_peak_studies=sorted(v.no_peaks))


def provenance_banner(prov: Provenance) -> str:
    """Markdown callout stating the data provenance; empty when every study's peaks are real.

    Names the simulated stand-ins and every study of the study table without any peak row.
    """
    if prov.all_real:
        return ""
    real = ", ".join(prov.real_studies) if prov.real_studies else "none"
    if prov.simulated_studies:
        title = "Data provenance: simulated stand-ins"
        head = (f"The peak coordinates of {prov.n_studies_simulated} of {prov.n_studies} "
                f"studies are **simulated stand-ins** ({prov.n_peaks_simulated} simulated peaks), "
                "generated by `analysis.simulate` because the original coordinates are not "
                "available to this compendium. ")
    else:
        title = "Data provenance: studies without peaks"
        head = ""
    missing = ""
    if prov.no_peak_studies:
        missing = (f"{prov.n_studies_no_peaks} of {prov.n_studies} studies have **no peak "
                   f"coordinates at all** ({', '.join(prov.no_peak_studies)}) and enter the "
                   "analysis as null studies. ")
    return (
        f'::: {{.callout-warning title="{title}"}}\n'
        f"{head}{missing}Real peaks: {prov.n_peaks_real} (studies: {real}; "
        f"{prov.n_studies_real} of {prov.n_studies}). Every map, table and number computed from "
        "the peaks below demonstrates the pipeline and is **not** a finding of the paper. "
        "Substitute the authors' data (`python -m analysis import-sdm DIR`, or edit "
        "`data/peaks.tsv`) and run `make paper`; this notice then disappears.\n"
        ":::\n"
    )


def viewer(label: str = "map-z", results_dir: str | Path | None = None, threshold=None):
    """Interactive slice viewer of a result map (nilearn ``view_img``) as embeddable HTML.

    Parameters
    ----------
    label : str
        A map of :data:`ARTEFACTS`.
    threshold : float, optional
        Display threshold; defaults to the z of the voxel threshold the meta stage used.
    """
    from IPython.display import HTML
    from nilearn.plotting import view_img
    from scipy.stats import norm

    path = artefact_path(label, results_dir)
    if not path.exists():
        return _missing_note(label, path)
    if threshold is None:
        p_thr = Values(results_dir).raw.get("meta", {}).get("threshold", {}).get("p_threshold")
        threshold = float(norm.isf(p_thr)) if p_thr else 3.0
    view = view_img(str(path), threshold=threshold, cmap="cold_hot", symmetric_cmap=True,
                    title=f"SDM-Z ({ARTEFACTS[label][1]}), |z| > {threshold:.2f}",
                    black_bg=False, colorbar=True)
    return HTML(view.get_iframe(width=760, height=320))


def renderer() -> str:
    """Which renderer is running the manuscript: ``quarto`` or ``fallback``."""
    return os.environ.get("PAINEMP_RENDERER", "quarto")


def renderer_name() -> str:
    """Human-readable name of the renderer running the manuscript."""
    if renderer() == "fallback":
        return "the compendium's fallback renderer (analysis/render.py; Quarto not installed)"
    return "Quarto"
