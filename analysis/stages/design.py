"""Pipeline stage "design": what a reviewer can verify without the authors' coordinates.

Ten of the eleven studies' peak tables of He et al. (2024) are not public; the clusters of
stage ``meta`` are computed on labelled simulated stand-ins and say nothing about the paper's
data. Three things can nevertheless be checked, and this stage computes them
(:mod:`analysis.checks.design_simulation`, :mod:`analysis.checks.table3`):

1. **The FWE threshold of this design.** Simulated null meta-analyses matched to the design
   (every study with its real sample sizes, threshold, reported directions and as many peaks as
   ``data/peaks.tsv`` lists for it), each run through the whole pipeline on the configured
   analysis mask (whole grey matter), give the distribution of the largest SDM-Z (and TFCE) of
   each direction under the null; its ``1 - alpha`` quantile is the SDM-Z a voxel needs for
   voxel-wise FWE ``alpha`` (Nichols & Holmes, 2002), each direction separately as in SDM-PSI
   (Albajes-Eizagirre et al., 2019). It is compared with the published peaks and with the
   threshold SDM-PSI's permutation test derives from the stand-in data (stage ``robustness``,
   ``tables/permutation_maxima.tsv``).
2. **The internal consistency of Table 3** (:func:`analysis.checks.table3.table3_consistency`).
3. **The sensitivity of the design.** Simulated meta-analyses with a true effect at each
   published location over a grid of true g (``design.effect_sizes``), analysed in the grey
   matter within ``design.sensitivity_roi_radius_mm`` of the published peaks (maps recreated
   on the whole mask, then restricted; a documented saving: only clusters near the published
   locations are counted): the probability of a same-sign cluster peak within
   ``design.match_distance_mm`` with the paper's thresholds and at the design's FWE threshold,
   and the g the pipeline then reports.

Writes ``tables/table3_checks.tsv``, ``tables/design_null_maxima.tsv``,
``tables/design_fwe_threshold.tsv``, ``tables/design_published_peaks.tsv``,
``tables/design_sensitivity_replicates.tsv``, ``tables/design_sensitivity.tsv`` and
``figures/design_sensitivity.{png,svg}``. Replicate counts are configuration values
(``design.*``, ``*_quick`` in quick mode); the intervals say how precise they make the answers,
and ``python -m analysis run --stage design --set design.null_replicates=...`` (or the
benchmark ``design``) runs larger versions through this same stage code.

References
----------
Albajes-Eizagirre, A., Solanes, A., Vieta, E., Radua, J. (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186, 174-184.
He, J. et al. (2024). Neural basis of pain empathy dysregulations in mental disorders: a
pre-registered neuroimaging meta-analysis.
Nichols, T. E. & Holmes, A. P. (2002). Nonparametric permutation tests for functional
neuroimaging: a primer with examples. Hum Brain Mapp 15, 1-25.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import pandas as pd

from analysis.checks import design_simulation as D
from analysis.io import save_figure
from analysis.sdm.inference.clusters import DECREASE, INCREASE, threshold_clusters
from analysis.sdm.inputs.io import write_tsv
from analysis.sdm.progress import progress
from analysis.stages import params

LGR = logging.getLogger(__name__)

DIRECTION_KEYS = {INCREASE: "increase", DECREASE: "decrease"}
#: columns of the null maxima per direction: (SDM-Z, TFCE)
NULL_STAT_COLUMNS = {"increase": ("max_z", "max_tfce"), "decrease": ("max_neg_z", "max_neg_tfce")}
THRESHOLD_COLUMNS = ["direction", "statistic", "n", "quantile", "estimate", "lower", "upper",
                     "coverage", "gumbel_estimate", "gumbel_lower", "gumbel_upper",
                     "null_median", "null_max", "psi_standin_estimate",
                     "psi_standin_median", "psi_permutations"]
PUBLISHED_COLUMNS = ["cluster", "direction", "region", "x", "y", "z", "sdm_z", "abs_z",
                     "fwe_z", "fwe_z_lower", "fwe_z_upper", "gumbel_fwe_z", "gumbel_fwe_z_lower",
                     "gumbel_fwe_z_upper", "n_exceed", "n", "p_fwe", "p_fwe_lower",
                     "p_fwe_upper", "p_fwe_min", "p_fwe_gumbel", "verdict", "verdict_text",
                     "verdict_gumbel",
                     "psi_standin_fwe_z", "passes_psi_standin"]


def _num(x, digits: int = 4):
    """A JSON-ready number: rounded float, ``None`` for NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _tab(x):
    """A JSON-ready number exactly as the stage's tables write it (``%.6g``; ``None`` for NaN
    and infinities), so that the text and the tables round one and the same value.
    """
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def design_params(config: dict, quick: bool) -> dict:
    """The stage's parameters from ``design`` (``*_quick`` keys in quick mode)."""
    d = config["design"]
    sfx = "_quick" if quick else ""
    return {"null_replicates": int(d[f"null_replicates{sfx}"]),
            "sensitivity_replicates": int(d[f"sensitivity_replicates{sfx}"]),
            "effect_sizes": [float(g) for g in d[f"effect_sizes{sfx}"]],
            "imputations": int(d[f"imputations{sfx}"]),
            "roi_radius_mm": d["sensitivity_roi_radius_mm"],
            "match_distance_mm": float(d["match_distance_mm"]),
            "confidence": float(d["confidence"]), "bootstrap": int(d["bootstrap"]),
            "tfce": bool(d["tfce"]), "alpha": float(config["sdm"]["robustness"]["fwe_alpha"])}


def sensitivity_space(config: dict, radius):
    """Analysis space of the sensitivity simulations: grey matter within ``radius`` mm of the
    published peaks (:func:`analysis.grid.analysis_mask`), or the configured mask (``None``).
    """
    from analysis.sdm.maps.space import MaskSpace

    if radius is None:
        return MaskSpace(params.masks(config)[0])
    cfg = copy.deepcopy(config)
    cfg["sdm"]["analysis_roi_radius_mm"] = float(radius)
    return MaskSpace(params.masks(cfg)[0])


# --------------------------------------------------------------------------------------------
# 1. the null maximum


def run_null(studies, quotas, config: dict, space, kernel, p: dict, rng_of) -> pd.DataFrame:
    """Null maxima of ``p["null_replicates"]`` simulated meta-analyses of the design.

    Replicate ``i`` simulates from stream ``design/null/<i>`` and seeds its imputations from
    ``rng_of(f"null/{i}/fit")``.
    """
    sdm = config["sdm"]
    thr = params.threshold_params(config)
    tfce = params.psi_params(config)["tfce_params"] if p["tfce"] else None
    # the simulated studies and the pooling of the imputations in threads (bit-identical
    # results)
    n_jobs = int(sdm["psi"]["n_jobs"])
    rows = []
    for i in progress(range(p["null_replicates"]), desc="design: null meta-analyses",
                      unit="meta-analysis", logger=LGR):
        t0 = time.perf_counter()
        peaks, _ = D.simulate_design(studies, quotas, int(config["seed"]), f"design/null/{i}",
                                     config, n_jobs=n_jobs)
        est = params.estimator(config, p["imputations"],
                               int(rng_of(f"null/{i}/fit").integers(2**31 - 1)),
                               keep_imputations=False, n_jobs=n_jobs)
        res = D.fit_peaks(studies, peaks[0], space, kernel, est,
                          unknown_peak_mode=sdm["unknown_peak_mode"], combine=sdm["combine"])
        sign = peaks[0]["sign"].to_numpy()
        cl = threshold_clusters(res.maps["z"], space, local_peaks=False, **thr)
        rows.append({"replicate": i + 1, **D.null_maxima(res.maps["z"], space, tfce),
                     "n_clusters_pos": cl.n_clusters(INCREASE),
                     "n_clusters_neg": cl.n_clusters(DECREASE),
                     "n_peaks": len(sign), "n_peaks_pos": int((sign > 0).sum()),
                     "n_peaks_neg": int((sign < 0).sum()),
                     "seconds": round(time.perf_counter() - t0, 2)})
    return pd.DataFrame(rows, columns=D.NULL_COLUMNS + ["seconds"])


def fwe_thresholds(null: pd.DataFrame, psi: pd.DataFrame | None, p: dict, rng) -> tuple:
    """Per direction and statistic: the design's FWE threshold with its intervals, and PSI's.

    Returns
    -------
    table : DataFrame
        :data:`THRESHOLD_COLUMNS`.
    gumbel : dict
        ``{(direction, statistic): gumbel_quantile output}``.
    """
    q = 1.0 - p["alpha"]
    rows, fits = [], {}
    for key, (zcol, tcol) in NULL_STAT_COLUMNS.items():
        for stat, col, pcol in (("sdm_z", zcol, zcol), ("tfce", tcol, tcol)):
            x = null[col].to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            if not len(x):
                continue
            e = D.quantile_ci(x, q, p["confidence"])
            g = D.gumbel_quantile(x, q, p["confidence"], p["bootstrap"], rng)
            fits[(key, stat)] = g
            perm = (psi[pcol].to_numpy(dtype=float)[1:] if psi is not None and len(psi) > 1
                    else np.zeros(0))
            rows.append({"direction": key, "statistic": stat, "n": e["n"], "quantile": q,
                         "estimate": e["estimate"], "lower": e["lower"], "upper": e["upper"],
                         "coverage": e["coverage"], "gumbel_estimate": g["estimate"],
                         "gumbel_lower": g["lower"], "gumbel_upper": g["upper"],
                         "null_median": float(np.median(x)), "null_max": float(x.max()),
                         "psi_standin_estimate": float(np.quantile(perm, q)) if len(perm)
                         else np.nan,
                         "psi_standin_median": float(np.median(perm)) if len(perm) else np.nan,
                         "psi_permutations": int(len(perm))})
    return pd.DataFrame(rows, columns=THRESHOLD_COLUMNS), fits


def published_verdicts(published: pd.DataFrame, null: pd.DataFrame, thresholds: pd.DataFrame,
                       gumbel: dict, p: dict) -> pd.DataFrame:
    """Each published peak against its direction's null maximum of SDM-Z."""
    rows = []
    for c, r in enumerate(published.itertuples(index=False), start=1):
        key = DIRECTION_KEYS[r.direction]
        z = float(r.sdm_z)
        th = thresholds[(thresholds["direction"] == key)
                        & (thresholds["statistic"] == "sdm_z")].iloc[0]
        g = gumbel[(key, "sdm_z")]
        ex = D.exceedance(null[NULL_STAT_COLUMNS[key][0]], abs(z), p["confidence"], g)
        psi_z = th["psi_standin_estimate"]
        rows.append({"cluster": c, "direction": r.direction, "region": r.region, "x": r.x,
                     "y": r.y, "z": r.z, "sdm_z": z, "abs_z": abs(z), "fwe_z": th["estimate"],
                     "fwe_z_lower": th["lower"], "fwe_z_upper": th["upper"],
                     "gumbel_fwe_z": g["estimate"], "gumbel_fwe_z_lower": g["lower"],
                     "gumbel_fwe_z_upper": g["upper"], "n_exceed": ex["n_exceed"], "n": ex["n"],
                     "p_fwe": ex["p_monte_carlo"], "p_fwe_lower": ex["p_lower"],
                     "p_fwe_upper": ex["p_upper"],
                     "p_fwe_min": D.smallest_monte_carlo_p(ex["n"]),
                     "p_fwe_gumbel": ex["p_gumbel"],
                     "verdict": D.monte_carlo_verdict(ex, p["alpha"]),
                     "verdict_text": D.verdict_text(D.monte_carlo_verdict(ex, p["alpha"]),
                                                    ex["n"]),
                     "verdict_gumbel": (D.fwe_verdict(abs(z), g["lower"], g["upper"])
                                        if g["fitted"] else "not fitted"),
                     "psi_standin_fwe_z": psi_z,
                     "passes_psi_standin": bool(np.isfinite(psi_z) and abs(z) > psi_z)})
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


# --------------------------------------------------------------------------------------------
# 3. sensitivity


def run_sensitivity(studies, quotas, config: dict, space, kernel, p: dict, effects: pd.DataFrame,
                    locations: pd.DataFrame, fwe_z: dict, rng_of) -> pd.DataFrame:
    """Detections at the published locations over replicates and true effect sizes.

    ``effects`` are unit effects (``g`` = +1 or -1) at the locations; replicate ``i`` scales
    them by every ``p["effect_sizes"]`` on one noise realisation per study (stream
    ``design/sensitivity/<i>``).
    """
    sdm = config["sdm"]
    thr = params.threshold_params(config)
    scales = p["effect_sizes"]
    n_jobs = int(sdm["psi"]["n_jobs"])
    rows = []
    bar = progress(total=p["sensitivity_replicates"] * len(scales), unit="meta-analysis",
                   desc="design: sensitivity meta-analyses", logger=LGR)
    with bar:
        for i in range(p["sensitivity_replicates"]):
            peaks, true_g = D.simulate_design(studies, quotas, int(config["seed"]),
                                              f"design/sensitivity/{i}", config,
                                              effects=effects, scales=scales, n_jobs=n_jobs)
            seed = int(rng_of(f"sensitivity/{i}/fit").integers(2**31 - 1))
            for j, c in enumerate(scales):
                est = params.estimator(config, p["imputations"], seed, keep_imputations=False,
                                       n_jobs=n_jobs)
                res = D.fit_peaks(studies, peaks[j], space, kernel, est,
                                  unknown_peak_mode=sdm["unknown_peak_mode"],
                                  combine=sdm["combine"])
                cl = threshold_clusters(res.maps["z"], space, local_peaks=False, **thr)
                m = D.match_locations(cl, space, locations, p["match_distance_mm"], res.maps,
                                      fwe_z)
                for k, loc in enumerate(locations.itertuples(index=False)):
                    rows.append({"replicate": i + 1, "effect_size": c, "location": k + 1,
                                 "direction": loc.direction, "x": loc.x, "y": loc.y,
                                 "z": loc.z, "true_g_mean": float(np.mean(true_g[j, :, k])),
                                 **m.iloc[k].to_dict(), "n_peaks": len(peaks[j])})
                bar.update(1)
    return pd.DataFrame(rows, columns=D.SENSITIVITY_COLUMNS)


# --------------------------------------------------------------------------------------------
# the stage


def _published(data_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 as printed text (for the consistency checks) and as numbers."""
    from analysis.checks.table3 import load_published_table3
    from analysis.labels import relabel_peaks

    text = load_published_table3(data_dir)
    num = text.copy()
    for col in ("cluster_voxels", "x", "y", "z", "sdm_z", "p_voxel", "hedges_g", "i2",
                "egger_p"):
        num[col] = pd.to_numeric(num[col].replace("", np.nan), errors="coerce").astype(float)
    for col in ("direction", "region", "aal_label"):
        num[col] = num[col].astype(str).str.strip()
    # one name per coordinate (analysis.labels.peak_labels), as in every other table; the
    # checks read the printed numbers only
    named = relabel_peaks(num).reset_index(drop=True)
    text = text.assign(region=named["region"].to_numpy(), aal_label=named["aal_label"].to_numpy())
    return text, named


def compute(config: dict, data_dir, p: dict, rng_of, psi: pd.DataFrame | None = None) -> dict:
    """Everything the stage writes, as tables and values (shared with the benchmark ``design``).

    Parameters
    ----------
    config : dict
        The validated configuration.
    data_dir : path-like
        Folder of ``studies.tsv``, ``peaks.tsv`` and ``published_table3.tsv``.
    p : dict
        :func:`design_params` (replicate counts, effect sizes, ...).
    rng_of : callable
        ``name -> numpy.random.Generator`` (the stage's ``ctx.rng``).
    psi : DataFrame, optional
        PSI permutation maxima of the stand-in data (stage ``robustness``).

    Returns
    -------
    dict
        ``tables`` (name -> DataFrame), ``summary``, ``published``, ``values`` and
        ``sensitivity_voxels``.
    """
    from analysis.checks.table3 import table3_consistency, verdict_counts
    from analysis.sdm.maps.space import MaskSpace
    from analysis.simulate import published_effects

    t_start = time.perf_counter()
    cfg = config
    dataset = params.compendium_dataset(data_dir, cfg)
    studies = dataset.studies
    text, published = _published(data_dir)

    # ---- 2. Table 3 against itself, the samples and the text
    checks = table3_consistency(text, studies, **params.table3_check_params(cfg))
    counts = verdict_counts(checks)
    flagged = checks[checks["verdict"] != "consistent"]

    # ---- 1. null maxima of the design (configured mask: whole grey matter)
    quotas = D.design_quotas(studies, dataset.peaks)
    space = MaskSpace(params.masks(cfg)[0])
    kernel = params.kernel(cfg, space)
    LGR.info("design: %d null meta-analyses on %d voxels, %d imputations", p["null_replicates"],
             space.n_voxels, p["imputations"])
    t0 = time.perf_counter()
    null = run_null(studies, quotas, cfg, space, kernel, p, rng_of)
    t_null = time.perf_counter() - t0
    thresholds, gumbel = fwe_thresholds(null, psi, p, rng_of("gumbel"))
    verdicts = published_verdicts(published, null, thresholds, gumbel, p)

    # ---- 3. sensitivity at the published locations (FWE: the null's empirical quantile)
    sens_space = sensitivity_space(cfg, p["roi_radius_mm"])
    unit = published_effects(data_dir)
    unit = unit.assign(g=np.sign(unit["g"]).astype(float))
    locations = published[["direction", "x", "y", "z"]]
    fwe_z = {}
    for r in locations.itertuples(index=False):
        sel = thresholds[(thresholds["direction"] == DIRECTION_KEYS[r.direction])
                         & (thresholds["statistic"] == "sdm_z")]
        fwe_z[r.direction] = float(sel["estimate"].iloc[0]) if len(sel) else np.nan
    t0 = time.perf_counter()
    sens = run_sensitivity(studies, quotas, cfg, sens_space, kernel, p, unit, locations, fwe_z,
                           rng_of)
    t_sens = time.perf_counter() - t0
    summary = D.compatible_effects(D.summarise_sensitivity(sens, p["confidence"]), published)

    vals = values(p, checks, counts, flagged, null, thresholds, verdicts, summary, published,
                  space, sens_space, psi, whole_mask=not cfg["sdm"].get("analysis_roi_radius_mm"),
                  seconds={
                      "null_seconds": round(t_null, 1), "sensitivity_seconds": round(t_sens, 1),
                      "null_replicate_seconds": round(t_null / max(len(null), 1), 2),
                      "total_seconds": round(time.perf_counter() - t_start, 1)})
    return {"tables": {"table3_checks": checks, "design_null_maxima": null,
                       "design_fwe_threshold": thresholds, "design_published_peaks": verdicts,
                       "design_sensitivity_replicates": sens, "design_sensitivity": summary},
            "summary": summary, "published": published, "values": vals,
            "sensitivity_voxels": int(sens_space.n_voxels), "n_studies": int(len(studies))}


#: float formats of the written tables
TABLE_FORMATS = {"table3_checks": "%.6g", "design_null_maxima": "%.6f",
                 "design_fwe_threshold": "%.6g", "design_published_peaks": "%.6g",
                 "design_sensitivity_replicates": "%.6g", "design_sensitivity": "%.6g"}


#: what the stage writes (listed with the reason in ``skipped`` when the stage cannot apply)
OUTPUTS = [*(f"tables/{name}.tsv" for name in TABLE_FORMATS),
           "figures/design_sensitivity.png", "figures/design_sensitivity.svg"]


def not_applicable(studies: pd.DataFrame) -> str | None:
    """Why the stage cannot model a study table's design, or None when it can.

    The stage simulates the paper's design: two-sample studies, each with the directions it
    reported (``contrasts_reported``), tested against the published patient-control clusters.
    """
    from analysis.sdm.inputs.studies import study_design

    design = study_design(studies)
    if design != "two-sample":
        what = "one-sample" if design == "one-sample" else "one-sample and two-sample"
        return (f"the study table holds {what} studies; the checks simulate the paper's design "
                "of patient-control studies and test the published patient-control clusters")
    if "contrasts_reported" not in studies.columns:
        return ("the study table has no 'contrasts_reported' column (the directions each study "
                "reported, which the simulated studies keep)")
    return None


def produce(ctx) -> dict:
    """Stage ``design`` (see the module docstring); for a study table whose design it cannot
    model (:func:`not_applicable`) it writes nothing and records why (``skipped``).
    """
    reason = not_applicable(params.compendium_dataset(ctx.data_dir, ctx.config).studies)
    if reason is not None:
        LGR.info("design: not computed: %s", reason)
        return {"not_applicable": reason, "skipped": {name: reason for name in OUTPUTS}}
    p = design_params(ctx.config, ctx.quick)
    psi_path = ctx.result("tables/permutation_maxima.tsv")
    psi = D.read_permutation_maxima(psi_path) if psi_path.exists() else None
    out = compute(ctx.config, ctx.data_dir, p, ctx.rng, psi)
    for name, df in out["tables"].items():
        if name == "design_null_maxima":
            df = df.drop(columns="seconds")
        write_tsv(ctx.out(f"tables/{name}.tsv"), df, float_format=TABLE_FORMATS[name])
    draw_sensitivity(out["summary"], out["published"], p, out["sensitivity_voxels"], ctx.out,
                     n_studies=out["n_studies"])
    return out["values"]


def draw_sensitivity(summary, published, p: dict, n_voxels: int, out,
                     n_studies: int = 11) -> None:
    """``figures/design_sensitivity.{png,svg}`` (:func:`analysis.figures.design_sensitivity.plot_sensitivity`)."""
    import matplotlib.pyplot as plt

    from analysis.figures.design_sensitivity import plot_sensitivity

    note = (f"Simulated meta-analyses of the paper's design ({n_studies} studies, their sample sizes, "
            f"thresholds, reported directions and peak counts): {p['sensitivity_replicates']} "
            f"per true g, {p['imputations']} imputations, {n_voxels} grey-matter voxels within "
            f"{p['roi_radius_mm']} mm of the published peaks. Vertical bars: "
            f"{100 * p['confidence']:g} % Clopper-Pearson intervals (A, B) and the central "
            f"{100 * p['confidence']:g} % of the reported g among detections (C).")
    fig = plot_sensitivity(summary, published, note=note, radius_mm=p["match_distance_mm"])
    save_figure(fig, out("figures/design_sensitivity.png"), dpi=300)
    save_figure(fig, out("figures/design_sensitivity.svg"))
    plt.close(fig)


def values(p, checks, counts, flagged, null, thresholds, verdicts, summary, published, space,
           sens_space, psi, seconds: dict, whole_mask: bool = True) -> dict:
    """What the manuscript cites (``values.json``); timings go to the stage manifest."""
    def thr(key, stat="sdm_z"):
        sel = thresholds[(thresholds["direction"] == key) & (thresholds["statistic"] == stat)]
        if not len(sel):
            return None
        r = sel.iloc[0]
        n = int(r["n"])
        return {"estimate": _tab(r["estimate"]), "lower": _tab(r["lower"]),
                "upper": _tab(r["upper"]), "coverage": _tab(r["coverage"]),
                "gumbel": _tab(r["gumbel_estimate"]),
                "gumbel_lower": _tab(r["gumbel_lower"]),
                "gumbel_upper": _tab(r["gumbel_upper"]),
                "gumbel_fitted": bool(np.isfinite(r["gumbel_estimate"])),
                "gumbel_note": ("" if np.isfinite(r["gumbel_estimate"]) else
                                D.GUMBEL_REFUSAL if n < D.GUMBEL_MIN_MAXIMA else
                                "not fitted: every null maximum is equal"),
                "null_median": _tab(r["null_median"]), "null_max": _tab(r["null_max"]),
                "psi_standin": _tab(r["psi_standin_estimate"]),
                "psi_standin_median": _tab(r["psi_standin_median"])}

    peaks = []
    for r in verdicts.itertuples(index=False):
        peaks.append({"cluster": int(r.cluster), "direction": r.direction,
                      "sdm_z": _tab(r.sdm_z), "n_exceed": int(r.n_exceed), "n": int(r.n),
                      "p_fwe": _tab(r.p_fwe), "p_fwe_lower": _tab(r.p_fwe_lower),
                      "p_fwe_upper": _tab(r.p_fwe_upper), "p_fwe_min": _tab(r.p_fwe_min),
                      "p_fwe_gumbel": _tab(r.p_fwe_gumbel), "verdict": r.verdict,
                      "verdict_text": D.verdict_text(r.verdict, r.n),
                      "verdict_gumbel": r.verdict_gumbel,
                      "passes_psi_standin": bool(r.passes_psi_standin)})
    locs = []
    for loc, grp in summary.groupby("location", sort=True):
        ok = grp[grp["compatible"].astype(bool)]["effect_size"].tolist()
        locs.append({"location": int(loc), "aal_label": published["aal_label"].iloc[int(loc) - 1],
                     "effect_sizes": [float(x) for x in grp["effect_size"]],
                     "p_detect": [_tab(x) for x in grp["p_detect"]],
                     "p_detect_fwe": [_tab(x) for x in grp["p_detect_fwe"]],
                     "p_covered": [_tab(x) for x in grp["p_detect_covered"]],
                     "distance_median": [_tab(x) for x in grp["distance_median"]],
                     "compatible_effect_sizes": [float(x) for x in ok],
                     "compatible_min": _num(min(ok), 2) if ok else None,
                     "compatible_max": _num(max(ok), 2) if ok else None})
    n_verdict = {v: int((verdicts["verdict"] == v).sum()) for v in ("passes", "fails",
                                                                      "undecided")}
    return {
        "table3_checks": {"n_checks": int(len(checks)), "consistent": counts["consistent"],
                          "inconsistent": counts["inconsistent"],
                          "not_checkable": counts["not checkable"],
                          "flagged": [f"{r.cluster}:{r.quantity}:{r.verdict}"
                                      for r in flagged.itertuples(index=False)]},
        "null": {"replicates": int(len(null)), "imputations": p["imputations"],
                 "smallest_p": _tab(D.smallest_monte_carlo_p(len(null))),
                 "decidable": bool(D.decidable(len(null), p["alpha"])),
                 "replicates_to_decide": int(math.ceil(1.0 / p["alpha"] - 1.0 - 1e-9)),
                 "gumbel_min_maxima": D.GUMBEL_MIN_MAXIMA,
                 "n_voxels": int(space.n_voxels), "alpha": p["alpha"],
                 "confidence": p["confidence"],
                 "whole_mask": bool(whole_mask),
                 "mean_peaks": _num(null["n_peaks"].mean(), 1),
                 "increase": thr("increase"), "decrease": thr("decrease"),
                 "tfce_increase": thr("increase", "tfce"),
                 "tfce_decrease": thr("decrease", "tfce")},
        "paper_threshold_fwer": paper_fwer(null, p["confidence"]),
        "psi_standin_permutations": int(len(psi) - 1) if psi is not None else 0,
        "published": peaks,
        "published_verdicts": n_verdict,
        "published_pass_psi_standin": int(verdicts["passes_psi_standin"].sum()),
        "sensitivity": {"replicates": p["sensitivity_replicates"],
                        "replicates_to_decide": D.SENSITIVITY_MIN_REPLICATES,
                        "decidable": bool(p["sensitivity_replicates"]
                                          >= D.SENSITIVITY_MIN_REPLICATES),
                        "effect_sizes": p["effect_sizes"],
                        "roi_radius_mm": p["roi_radius_mm"],
                        "n_voxels": int(sens_space.n_voxels),
                        "match_distance_mm": p["match_distance_mm"], "locations": locs},
        **seconds,
    }



def paper_fwer(null: pd.DataFrame, confidence: float) -> dict:
    """Share of null meta-analyses with any cluster at the paper's thresholds, per direction and
    in either, with Clopper-Pearson intervals: the family-wise false-positive rate of the
    paper's uncorrected thresholds in this design.
    """
    from scipy.stats import binomtest

    out = {}
    n = len(null)
    for key, hit in (("increase", null["n_clusters_pos"] > 0),
                     ("decrease", null["n_clusters_neg"] > 0),
                     ("either", (null["n_clusters_pos"] > 0) | (null["n_clusters_neg"] > 0))):
        k = int(hit.sum())
        ci = binomtest(k, n).proportion_ci(confidence, method="exact") if n else None
        out[key] = {"hits": k, "rate": _tab(k / n if n else np.nan),
                    "lower": _tab(ci.low if ci else np.nan),
                    "upper": _tab(ci.high if ci else np.nan)}
    out["replicates"] = n
    return out
