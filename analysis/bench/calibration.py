"""Whole-pipeline null calibration of the FWE correction (null simulations).

Registered in ``python -m analysis bench`` as ``null-calibration``. Each of ``--simulations``
simulated meta-analyses runs the whole pipeline with no planted effect:

1. null peaks of ``n_studies`` studies (:func:`analysis.simulate.simulate_meta_dataset` with
   ``null=True``: smooth noise t-maps, SPM-like peak lists in both directions);
2. SDM pre-processing (:func:`analysis.sdm.maps.preprocess.preprocess`) on the analysis mask,
   restricted to a sphere of ``roi_radius_mm`` around the published peaks through the
   configuration key ``sdm.analysis_roi_radius_mm`` (an in-memory override of
   :func:`analysis.config.load_config`; ``config.yaml`` is not touched);
3. MetaNSUE multiple imputation and the random-effects mean model (the estimator of stage
   ``robustness``, imputations kept);
4. the PSI permutation test (:func:`analysis.sdm.inference.permutation.psi_permutation_test`);
5. a family-wise error "hit" when any voxel has ``p_FWE < alpha`` in either direction, for the
   voxel-wise maximum statistic and for TFCE.

The false-positive rates come with 95 % Clopper-Pearson intervals
(:func:`scipy.stats.binomtest`) and are compared with the rate expected under exchangeability
with ``N`` permutations (:func:`expected_fwe_rate`). Every random stream derives from the
configuration seed, ``derive_rng(seed, "bench/null-calibration/<i>")`` for simulation ``i``,
so two runs give identical numbers whatever the number of workers.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.bench import peak_rss_gb, register
from analysis.sdm.progress import progress as progress_bar

LGR = logging.getLogger(__name__)

#: random stream of simulation ``i``: ``derive_rng(seed, STREAM.format(i=i))``
STREAM = "bench/null-calibration/{i}"
#: defaults of :func:`null_calibration` and of the bench options (measured on 2 shared cores:
#: about 6 s per simulated meta-analysis with a 20 mm ROI, 12 196 voxels, 100 permutations)
DEFAULTS = {"simulations": 100, "permutations": 100, "imputations": 5, "roi_radius_mm": 20.0,
            "n_studies": 11, "alpha": 0.05}


def expected_fwe_rate(n_permutations: int, alpha: float = 0.05) -> tuple[float, float]:
    """False-positive rate of ``p_FWE < alpha`` under exchangeability with ``N`` permutations.

    The FWE-corrected p of the observed maximum is its rank among the ``N`` permutation maxima
    (identity included) divided by ``N``, so ``p < alpha`` means ``rank <= ceil(alpha N) - 1``,
    which has probability ``q = (ceil(alpha N) - 1) / N`` when the maxima are exchangeable and
    without ties.

    Parameters
    ----------
    n_permutations : int
        Permutations including the identity.
    alpha : float
        FWE level.

    Returns
    -------
    q : float
        Exact rate of one direction.
    either : float
        Rate of "either direction", ``1 - (1 - q)^2``, which treats the two directions as
        independent (the maximum and the minimum of the same null maps are nearly so; the
        exact joint rate lies between ``q`` and ``2q``).
    """
    n = int(n_permutations)
    if n < 1:
        raise ValueError("n_permutations must be >= 1")
    q = (math.ceil(alpha * n) - 1) / n
    return q, 1.0 - (1.0 - q) ** 2


@dataclass
class _Pipeline:
    """What every simulation shares: configuration, voxel space and the cached kernel."""

    cfg: dict
    space: object
    kernel: object
    n_studies: int
    imputations: int
    permutations: int
    backend: str
    n_jobs: int


def _prepare(roi_radius_mm: float | None, n_studies: int, imputations: int, permutations: int,
             backend: str, n_jobs: int, seed: int | None,
             psi_overrides: dict | None = None) -> _Pipeline:
    from analysis.config import load_config
    from analysis.sdm.maps.kernel import make_kernel
    from analysis.sdm.maps.preprocess import recreation_space
    from analysis.sdm.maps.space import MaskSpace
    from analysis.stages import params

    overrides: dict = {"sdm": {"analysis_roi_radius_mm": roi_radius_mm}}
    if psi_overrides:
        overrides["sdm"]["psi"] = dict(psi_overrides)
    if seed is not None:
        overrides["seed"] = int(seed)
    cfg = load_config(overrides)
    space = MaskSpace(params.masks(cfg)[0])
    # one kernel for every simulation (its bounded peak cache is reused across studies), on the
    # space where maps are recreated: the whole grey-matter mask, then restricted to the ROI
    ep = params.estimator_params(cfg)
    kernel = make_kernel(recreation_space(space, params.masks(cfg)[1])[0], fwhm=ep["fwhm"],
                         anisotropy=ep["anisotropy"], template=ep["kernel_template"],
                         path_model=ep["path_model"], outside_stretch=ep["outside_stretch"],
                         outside_radius=ep["outside_radius"])
    return _Pipeline(cfg, space, kernel, int(n_studies), int(imputations), int(permutations),
                     backend, int(n_jobs))


def simulate_once(pipe: _Pipeline, i: int, alpha: float) -> dict:
    """Run simulation ``i`` of the null calibration through the whole pipeline.

    Parameters
    ----------
    pipe : _Pipeline
        Shared configuration, space and kernel (:func:`_prepare`).
    i : int
        Simulation index; its random stream is ``derive_rng(seed, STREAM.format(i=i))``.
    alpha : float
        FWE level of a hit.

    Returns
    -------
    dict
        One row: minimum FWE p of each map and direction, hits, observed maxima and their rank
        among the permutation maxima, peak counts, agreement of the observed PSI z with the
        estimator's z, and the seconds of each step.
    """
    from analysis.sdm.inference.permutation import psi_permutation_test
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.preprocess import preprocess
    from analysis.sdm.rng import derive_rng
    from analysis.simulate import simulate_meta_dataset
    from analysis.stages import params

    cfg, sdm = pipe.cfg, pipe.cfg["sdm"]
    rng = derive_rng(int(cfg["seed"]), STREAM.format(i=i))
    t0 = time.perf_counter()
    studies, peaks = simulate_meta_dataset(pipe.n_studies, [], rng, null=True, cfg=cfg)
    t1 = time.perf_counter()
    ds = SDMDataset(studies, peaks)
    b = preprocess(ds, pipe.space, unknown_peak_mode=sdm["unknown_peak_mode"],
                   combine=sdm["combine"], kernel=pipe.kernel, progress=False)
    res = params.estimator(cfg, pipe.imputations, int(rng.integers(2**31 - 1)),
                           keep_imputations=True).fit_bounds(b.lower, b.upper, b.n1, b.n2, pipe.space,
                                                       studies=list(b.studies))
    t2 = time.perf_counter()
    psi = {**params.psi_params(cfg), "n_jobs": pipe.n_jobs, "backend": pipe.backend}
    perm = psi_permutation_test(res, pipe.permutations, seed=int(rng.integers(2**31 - 1)),
                                **psi)
    t3 = time.perf_counter()
    maps, mx = perm.maps, perm.maxima.to_numpy()[:, 1:]
    counts = peaks.groupby("study").size().reindex(studies["study"]).fillna(0).to_numpy(int)
    row = {"simulation": i, "peaks": int(counts.sum()), "empty_studies": int((counts == 0).sum()),
           "peaks_pos": int((peaks["sign"] > 0).sum()), "peaks_neg": int((peaks["sign"] < 0).sum())}
    for name, key in (("voxel_pos", "p_voxel"), ("voxel_neg", "p_voxel_neg"),
                      ("tfce_pos", "p_tfce"), ("tfce_neg", "p_tfce_neg")):
        p = float(np.min(maps[key]))
        row[f"min_p_{name}"] = p
        row[f"hit_{name}"] = bool(p < alpha)
    for stat in ("voxel", "tfce"):
        row[f"hit_{stat}"] = row[f"hit_{stat}_pos"] or row[f"hit_{stat}_neg"]
    # observed maxima (first row: identity permutation) and their rank among all N rows
    for c, name in enumerate(("max_z", "max_neg_z", "max_tfce", "max_neg_tfce")):
        row[f"observed_{name}"] = float(mx[0, c])
        row[f"null_median_{name}"] = float(np.median(mx[1:, c])) if len(mx) > 1 else np.nan
        row[f"rank_{name}"] = int((mx[:, c] >= mx[0, c]).sum())
    z_fit = np.asarray(res.maps["z"], dtype=float)
    row["observed_z_sd"] = float(np.std(z_fit))
    row["observed_frac_abs_z_gt_1.96"] = float(np.mean(np.abs(z_fit) > 1.959964))
    row["psi_vs_fit_max_abs_z_diff"] = float(np.max(np.abs(np.asarray(maps["z"]) - z_fit)))
    row.update({"seconds_simulate": t1 - t0, "seconds_fit": t2 - t1,
                "seconds_permutations": t3 - t2})
    return row


def _rate(hits: int, n: int, expected: float) -> dict:
    from scipy.stats import binomtest

    ci = binomtest(int(hits), int(n)).proportion_ci(0.95, method="exact")
    return {"hits": int(hits), "rate": round(hits / n, 4),
            "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
            "calibrated": bool(ci.low <= expected <= ci.high)}


def null_calibration(simulations: int = DEFAULTS["simulations"],
                     permutations: int = DEFAULTS["permutations"],
                     imputations: int = DEFAULTS["imputations"],
                     roi_radius_mm: float | None = DEFAULTS["roi_radius_mm"],
                     n_studies: int = DEFAULTS["n_studies"], alpha: float = DEFAULTS["alpha"],
                     *, seed: int | None = None, psi_overrides: dict | None = None,
                     n_jobs: int = 1, backend: str = "numba",
                     blas_threads: int | None = 1, progress: bool = True) -> dict:
    """False-positive rate of the FWE correction over simulated null meta-analyses.

    Parameters
    ----------
    simulations : int
        Simulated meta-analyses (each with its own stream, see :data:`STREAM`).
    permutations : int
        PSI permutations per meta-analysis, identity included.
    imputations : int
        MetaNSUE imputations per meta-analysis.
    roi_radius_mm : float or None
        ``sdm.analysis_roi_radius_mm`` of the analysis (``None``: whole grey-matter mask).
    n_studies : int
        Studies per meta-analysis.
    alpha : float
        FWE level: a hit is any voxel with ``p_FWE < alpha`` in either direction.
    seed : int, optional
        Overrides the configuration seed.
    psi_overrides : dict, optional
        In-memory overrides of the configuration's ``sdm.psi`` (validated like it), e.g.
        ``{"tfce_subject_fwhm_mm": 20}`` for a separate, smoother TFCE null.
    n_jobs : int
        Parallel permutation chunks of each PSI test (threads; results do not depend on it).
    backend : {"numpy", "numba", "cupy"}
        Back-end of the PSI kernel.
    blas_threads : int or None
        Limit on the BLAS threads while running (``None``: leave as is). The PSI study-effect
        products are small matrix-vector products; a multi-threaded OpenBLAS makes them up to
        70 times slower on a busy two-core machine (measured), and results do not depend on it.
    progress : bool
        Show a progress bar over the simulations.

    Returns
    -------
    dict
        ``metrics`` (JSON-ready summary: rates, 95 % Clopper-Pearson intervals, expected rate,
        ``calibrated`` and diagnostics) and ``per_simulation`` (DataFrame, one row per
        simulation, see :func:`simulate_once`).
    """
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    n_sim = int(simulations)
    if n_sim < 1:
        raise ValueError("simulations must be >= 1")
    t0 = time.perf_counter()
    limits = (threadpool_limits(limits=int(blas_threads), user_api="blas")
              if blas_threads else nullcontext())
    with limits:
        pipe = _prepare(roi_radius_mm, n_studies, imputations, permutations, backend, n_jobs,
                        seed, psi_overrides)
        LGR.info("null calibration: %d simulations x %d studies, %d imputations, "
                 "%d permutations, %d voxels (ROI %s mm)", n_sim, pipe.n_studies,
                 pipe.imputations, pipe.permutations, pipe.space.n_voxels, roi_radius_mm)
        t_setup = time.perf_counter() - t0
        rows = []
        bar = progress_bar(range(n_sim), desc="null calibration", unit="meta-analysis",
                           disable=not progress, logger=LGR)
        for i in bar:
            rows.append(simulate_once(pipe, i, alpha))
            bar.set_postfix(voxel=sum(r["hit_voxel"] for r in rows),
                            tfce=sum(r["hit_tfce"] for r in rows))
    seconds = time.perf_counter() - t0
    table = pd.DataFrame(rows)
    q, either = expected_fwe_rate(pipe.permutations, alpha)
    metrics: dict = {
        "simulations": n_sim, "studies": pipe.n_studies, "permutations": pipe.permutations,
        "imputations": pipe.imputations, "roi_radius_mm": roi_radius_mm,
        "voxels": int(pipe.space.n_voxels), "alpha": alpha, "seed": int(pipe.cfg["seed"]),
        "subject_fwhm_mm": float(pipe.cfg["sdm"]["psi"]["subject_fwhm_mm"]),
        "tfce_subject_fwhm_mm": pipe.cfg["sdm"]["psi"]["tfce_subject_fwhm_mm"],
        "expected_rate_one_direction": round(q, 4), "expected_rate": round(either, 4),
    }
    for stat in ("voxel", "tfce"):
        r = _rate(int(table[f"hit_{stat}"].sum()), n_sim, either)
        metrics.update({f"fwe_{stat}_hits": r["hits"], f"fwe_{stat}_rate": r["rate"],
                        f"fwe_{stat}_ci95": r["ci95"], f"calibrated_{stat}": r["calibrated"]})
        for d in ("pos", "neg"):
            rd = _rate(int(table[f"hit_{stat}_{d}"].sum()), n_sim, q)
            metrics[f"fwe_{stat}_{d}_rate"] = rd["rate"]
            metrics[f"fwe_{stat}_{d}_ci95"] = rd["ci95"]
    metrics["calibrated"] = bool(metrics["calibrated_voxel"] and metrics["calibrated_tfce"])
    # diagnostics: where the observed maximum ranks among the N permutation maxima (rank 1 =
    # larger than every permuted maximum; probability 1/N under exchangeability)
    for name in ("max_z", "max_neg_z", "max_tfce", "max_neg_tfce"):
        metrics[f"rank1_fraction_{name}"] = round(float((table[f"rank_{name}"] == 1).mean()), 4)
    for name in ("max_z", "max_neg_z"):
        metrics[f"mean_observed_{name}"] = round(float(table[f"observed_{name}"].mean()), 3)
        metrics[f"mean_null_median_{name}"] = round(float(table[f"null_median_{name}"].mean()), 3)
    metrics["mean_observed_z_sd"] = round(float(table["observed_z_sd"].mean()), 3)
    metrics["mean_observed_frac_abs_z_gt_1.96"] = round(
        float(table["observed_frac_abs_z_gt_1.96"].mean()), 4)
    metrics["max_psi_vs_fit_abs_z_diff"] = float(table["psi_vs_fit_max_abs_z_diff"].max())
    metrics["mean_peaks_per_study"] = round(float(table["peaks"].mean() / pipe.n_studies), 2)
    metrics["simulations_with_empty_study"] = int((table["empty_studies"] > 0).sum())
    metrics["empty_studies_total"] = int(table["empty_studies"].sum())
    metrics["seconds"] = round(seconds, 1)
    metrics["seconds_setup"] = round(t_setup, 1)
    metrics["seconds_per_simulation"] = round((seconds - t_setup) / n_sim, 2)
    for step in ("simulate", "fit", "permutations"):
        metrics[f"seconds_{step}_mean"] = round(float(table[f"seconds_{step}"].mean()), 2)
    LGR.info("null calibration: voxel-FWE rate %.3f %s, TFCE-FWE rate %.3f %s, expected %.3f",
             metrics["fwe_voxel_rate"], metrics["fwe_voxel_ci95"], metrics["fwe_tfce_rate"],
             metrics["fwe_tfce_ci95"], either)
    return {"metrics": metrics, "per_simulation": table}


@register("null-calibration", "whole-pipeline null simulations: voxel- and TFCE-FWE "
                              "false-positive rate with 95% CI vs the expected rate")
def bench_null_calibration(args: argparse.Namespace) -> dict:
    """Benchmark entry: :func:`null_calibration` with the ``--sim-*`` options of the command."""
    def opt(name):
        value = getattr(args, name, None)
        return DEFAULTS[name.removeprefix("sim_")] if value is None else value

    roi = opt("sim_roi_radius_mm")
    tfce_fwhm = getattr(args, "tfce_subject_fwhm_mm", None)
    out = null_calibration(simulations=int(opt("simulations")),
                           permutations=int(opt("sim_permutations")),
                           imputations=int(opt("sim_imputations")),
                           roi_radius_mm=float(roi) if roi and roi > 0 else None,
                           n_studies=int(opt("sim_n_studies")),
                           psi_overrides=(None if tfce_fwhm is None
                                          else {"tfce_subject_fwhm_mm": float(tfce_fwhm)}),
                           n_jobs=int(getattr(args, "n_jobs", 1) or 1),
                           backend=getattr(args, "backend", "numba") or "numba")
    m = out["metrics"]
    m["peak_rss_gb"] = round(peak_rss_gb(), 2)
    notes = [
        "no planted effect: simulate_meta_dataset(null=True) -> SDM pre-processing -> MetaNSUE "
        "imputation -> PSI permutation test; a hit = any voxel with p_FWE < alpha in either "
        "direction",
        "95% CI: Clopper-Pearson (scipy.stats.binomtest); expected_rate = 1 - (1 - q)^2 with "
        "q = (ceil(alpha N) - 1) / N the exact one-direction rate for N permutations "
        "(directions treated as independent)",
        f"analysis restricted to {m['voxels']} grey-matter voxels within "
        f"{m['roi_radius_mm']} mm of the published peaks (sdm.analysis_roi_radius_mm, "
        "in-memory override) to fit about 10 minutes on 2 cores",
        "rank1_fraction_*: share of simulations whose observed maximum exceeds every permuted "
        "maximum (1/N expected under exchangeability)",
    ]
    if not m["calibrated"]:
        notes.append("NOT CALIBRATED: the expected rate lies outside the 95% CI of the measured "
                     "rate (see the per-direction rates and rank1 fractions)")
    return {"metrics": m, "ratios": {}, "notes": notes}
