"""PSI benchmarks: the permutation kernels against a naive loop, the NumPy reference and NiMARE,
and the null maxima of our PSI on Enge et al. (2021) against SDM-PSI's.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import pandas as pd

from analysis.bench import peak_rss_gb, register

LGR = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# PSI permutations
# ---------------------------------------------------------------------------------------------
def _psi_inputs(imputations: int, seed: int):
    """The 11-study data of ``data/``: pre-processing and MetaNSUE imputation (kept)."""
    from analysis import paths
    from analysis.config import load_config
    from analysis.grid import gm_mask
    from analysis.sdm.inference.permutation import PSIInputs
    from analysis.stages import params

    cfg = load_config()
    ds = params.compendium_dataset(paths.data_dir(), cfg)
    res = params.estimator(cfg, imputations, seed, keep_imputations=True).fit(
        ds, mask_img=gm_mask(cfg["sdm"]["mask"]))
    return PSIInputs.from_result(res), ds


def naive_permutation(inputs, subjects, codes, b: int) -> tuple[float, float, float, float]:
    """Reference loop: one permutation recomputed from scratch (no algebra, no fusion).

    For every imputation the subject images ``Z + g/J`` are built explicitly, permuted,
    averaged (``J x mean difference``), meta-analysed with
    :func:`analysis.sdm.statistics.random_effects.fit_random_effects` (the inputs' heterogeneity estimator)
    and pooled; TFCE by labelling every
    height (:func:`analysis.sdm.inference.tfce.tfce_reference`).
    """
    from analysis.sdm.inference.tfce import tfce_reference
    from analysis.sdm.statistics.pooling import rubin_z
    from analysis.sdm.statistics.random_effects import fit_random_effects

    k1, k2 = inputs.variance_coefficients()
    jj = inputs.j
    m, k, _ = inputs.imputations.shape
    coefs, vars_ = [], []
    for j in range(m):
        g = np.empty((k, inputs.space.n_voxels))
        for i in range(k):
            a = int(inputs.n1[i])
            y = subjects[i].astype(np.float64)
            y[:a] += inputs.imputations[j, i] / jj[i]
            w = codes.weights[i][b].astype(np.float64)
            g[i] = jj[i] * (w @ y)
        fit = fit_random_effects(g, k1[:, None] + k2[:, None] * g * g,
                                 method=inputs.heterogeneity)
        coefs.append(fit["coef"])
        vars_.append(fit["var"])
    _, _, z = rubin_z(np.array(coefs), np.array(vars_))
    pos = tfce_reference(inputs.space.to_volume(np.maximum(z, 0)))
    neg = tfce_reference(inputs.space.to_volume(np.maximum(-z, 0)))
    return float(z.max()), float((-z).max()), float(pos.max()), float(neg.max())


def _nimare_ale_fwe_seconds(ds, n_iters: int, n_cores: int) -> float:
    """Seconds of NiMARE's ALE + Monte-Carlo FWE (``FWECorrector(method="montecarlo")``)."""
    from nimare.correct import FWECorrector
    from nimare.dataset import Dataset
    from nimare.meta.cbma import ALE

    data = {}
    for s in ds.studies.itertuples(index=False):
        p = ds.peaks[ds.peaks["study"] == s.study]
        n = int(s.n1 + (0 if not np.isfinite(s.n2) else s.n2))
        data[s.study] = {"contrasts": {"1": {
            "coords": {"space": "MNI", "x": p["x"].tolist(), "y": p["y"].tolist(),
                       "z": p["z"].tolist()},
            "metadata": {"sample_sizes": [n]}}}}
    dset = Dataset(data)
    t0 = time.perf_counter()
    res = ALE().fit(dset)
    FWECorrector(method="montecarlo", n_iters=n_iters, n_cores=n_cores,
                 voxel_thresh=0.001).transform(res)
    return time.perf_counter() - t0


def stream_seconds(arrays, n_jobs: int, repeats: int = 3) -> float:
    """Roofline of one permutation: the best of ``repeats`` plain streaming passes (a sum) over
    ``arrays`` (the bytes a permutation must read), split over ``n_jobs`` threads.
    """
    from joblib import Parallel, delayed

    parts = []
    for a in arrays:
        flat = a.reshape(-1)
        step = -(-flat.size // max(int(n_jobs), 1))
        parts += [flat[s:s + step] for s in range(0, flat.size, step)]
    best = np.inf
    with Parallel(n_jobs=n_jobs, prefer="threads") as par:
        for _ in range(repeats):
            t = time.perf_counter()
            par(delayed(np.add.reduce)(x, dtype=np.float32) for x in parts)
            best = min(best, time.perf_counter() - t)
    return best


def _age_design(inputs, ds):
    """PSI inputs of the meta-regression on the patients' mean age (``age_patients_mean``;
    ``None`` without it or with fewer than 4 studies reporting it).
    """
    from analysis.sdm.inference.permutation import PSIInputs

    studies = ds.studies.set_index("study").loc[inputs.studies]
    if "age_patients_mean" not in studies.columns:
        return None
    age = pd.to_numeric(studies["age_patients_mean"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(age)
    if keep.sum() < 4:
        return None
    return PSIInputs(inputs.imputations[:, keep], inputs.n1[keep], inputs.n2[keep],
                     inputs.space, X=np.c_[np.ones(int(keep.sum())), age[keep]], C=[0, 1],
                     studies=[s for s, k in zip(inputs.studies, keep, strict=True) if k])


def _freedman_lane_kernels(fl, n: int, seed: int) -> tuple[float, float, float]:
    """Seconds per Freedman-Lane permutation of the voxel-blocked kernel and of the voxel-major
    estimator kernel (one thread), and the largest z difference between them.
    """
    from analysis.sdm.inference.permutation import _Engine, _freedman_lane_parts, make_codes
    from analysis.sdm.rng import derive_rng

    n = max(int(n), 1)
    codes = make_codes(fl, n + 1, derive_rng(seed, "psi/permutations"))
    fit, res = _freedman_lane_parts(fl, 0, 0.0, 256)
    blocked = _Engine(fl, None, fit, res, 0, 0.0, "numba", 256, {})
    major = _Engine(fl, None, fit, res, 0, 0.0, "numba", 256, {}, voxel_blocked=False)
    blocked.permuted_z(codes, 1), major.pooled(codes, 1)  # compile
    t = time.perf_counter()
    zb = [blocked.permuted_z(codes, b) for b in range(1, n + 1)]
    t_b = (time.perf_counter() - t) / n
    t = time.perf_counter()
    zm = [major.pooled(codes, b)["z"] for b in range(1, n + 1)]
    t_m = (time.perf_counter() - t) / n
    return t_b, t_m, float(max(np.abs(a - b).max() for a, b in zip(zb, zm, strict=True)))


def _busy(seconds: float) -> None:  # pragma: no cover - runs in a child process
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def _loaded_seconds_per_permutation(inputs, subjects, n: int, seed: int, args) -> float:
    """Seconds per permutation while one CPU-bound process competes for the cores."""
    import multiprocessing as mp

    from analysis.sdm.inference.permutation import psi_permutation_test

    ctx = mp.get_context("spawn")
    hog = ctx.Process(target=_busy, args=(3600.0,), daemon=True)
    hog.start()
    try:
        time.sleep(0.5)
        r = psi_permutation_test(inputs, n, seed=seed, n_jobs=args.n_jobs, backend=args.backend,
                                 subject_images=subjects)
    finally:
        hog.terminate()
        hog.join()
    return r.info["seconds_permutations"] / (n - 1)


@register("psi", "PSI permutations x imputations on the 11-study data (FWE + TFCE maxima)")
def bench_psi(args: argparse.Namespace) -> dict:
    from analysis.config import load_config
    from analysis.sdm.inference.permutation import (
        make_codes,
        make_subject_images,
        psi_permutation_test,
    )
    from analysis.sdm.rng import derive_rng

    cfg = load_config()
    n_perm = int(args.permutations)
    t0 = time.perf_counter()
    inputs, ds = _psi_inputs(int(args.imputations), int(cfg["seed"]))
    t_fit = time.perf_counter() - t0
    seed = int(cfg["seed"])
    subjects = make_subject_images(inputs.n1, inputs.n2, inputs.space,
                                   derive_rng(seed, "psi/subject_images"))
    # warm-up (numba compilation) outside the timings
    psi_permutation_test(inputs, 2, seed=seed, backend=args.backend, subject_images=subjects)
    ours = psi_permutation_test(inputs, n_perm, seed=seed, n_jobs=args.n_jobs,
                                backend=args.backend, subject_images=subjects)
    t_ours = ours.info["seconds_permutations"]
    per_perm = t_ours / max(n_perm - 1, 1)
    metrics = {
        "studies": len(inputs.n1), "voxels": int(inputs.space.n_voxels),
        "imputations": int(inputs.imputations.shape[0]), "permutations": n_perm,
        "backend": args.backend, "n_jobs": args.n_jobs, "kernel": ours.info["kernel"],
        "precision": ours.info["precision"], "cpu_count": os.cpu_count(),
        "fit_seconds": round(t_fit, 1), "setup_seconds": ours.info["seconds_setup"],
        "permutation_seconds": round(t_ours, 1),
        "seconds_per_permutation": round(per_perm, 3),
        "permutations_per_second": round(1 / per_perm, 3),
        "extrapolated_seconds_1000": round(per_perm * 999, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    ratios, notes = {}, []
    # roofline: a plain streaming pass over what every permutation reads (subject images and
    # the imputations, in the kernel's layout), with the same number of threads
    from analysis.sdm.statistics.re_kernels import blocked_layout

    data = [*subjects, blocked_layout(inputs.imputations)]
    t_roof = stream_seconds(data, int(args.n_jobs))
    metrics["bytes_read_per_permutation_gb"] = round(sum(a.nbytes for a in data) / 1e9, 3)
    metrics["roofline_seconds_per_permutation"] = round(t_roof, 4)
    metrics["roofline_gb_per_second"] = round(sum(a.nbytes for a in data) / 1e9 / t_roof, 1)
    ratios["ours_over_roofline"] = round(per_perm / t_roof, 2)
    del data
    notes.append("roofline: the best of 3 streaming sums over the subject images and the "
                 "voxel-blocked imputations with n_jobs threads; the kernel is compute-bound "
                 "(divisions and sums over studies per voxel and imputation), so the ratio "
                 "is the arithmetic above the memory traffic")
    # double-precision per-study arithmetic on a few permutations (same data, same run)
    n_dbl = max(2, min(n_perm, int(args.naive_permutations) * 10 + 1))
    dbl = psi_permutation_test(inputs, n_dbl, seed=seed, n_jobs=args.n_jobs,
                               backend=args.backend, subject_images=subjects,
                               precision="double")
    t_dbl = dbl.info["seconds_permutations"] / (n_dbl - 1)
    metrics["double_seconds_per_permutation"] = round(t_dbl, 3)
    ratios["double_over_" + ours.info["precision"]] = round(t_dbl / per_perm, 2)
    metrics["single_vs_double_max_abs_z_diff"] = float(np.abs(
        dbl.maxima[["max_z", "max_neg_z"]].to_numpy()
        - ours.maxima[["max_z", "max_neg_z"]].to_numpy()[:n_dbl]).max())
    # Freedman-Lane (meta-regression on one covariate, permutation of studies): the
    # voxel-blocked kernel against the voxel-major estimator kernel, one thread each, on the
    # same imputations with the patients' mean age as the covariate
    fl = _age_design(inputs, ds)
    if fl is not None:
        t_blk, t_vmaj, diff = _freedman_lane_kernels(fl, int(args.naive_permutations) * 5, seed)
        metrics["freedman_lane_seconds_per_permutation_one_thread"] = round(t_blk, 3)
        metrics["freedman_lane_voxel_major_seconds_per_permutation_one_thread"] = round(t_vmaj, 3)
        metrics["freedman_lane_max_abs_z_diff"] = diff
        ratios["freedman_lane_voxel_major_over_blocked"] = round(t_vmaj / t_blk, 2)
        notes.append("Freedman-Lane: permutations of a [1, mean age] design on the same "
                     "imputations, kernels timed in one thread")
    # graceful under load: the same permutations with one competing CPU-bound process
    n_load = max(2, min(n_perm, int(args.load_permutations) + 1))
    if int(args.load_permutations) > 0:
        t_alone = psi_permutation_test(inputs, n_load, seed=seed, n_jobs=args.n_jobs,
                                       backend=args.backend, subject_images=subjects
                                       ).info["seconds_permutations"] / (n_load - 1)
        t_load = _loaded_seconds_per_permutation(inputs, subjects, n_load, seed, args)
        cores = os.cpu_count() or 1
        metrics["loaded_seconds_per_permutation"] = round(t_load, 3)
        metrics["unloaded_seconds_per_permutation"] = round(t_alone, 3)
        ratios["slowdown_one_busy_core"] = round(t_load / t_alone, 2)
        metrics["slowdown_proportional_to_cores_taken"] = (
            round(cores / (cores - 1), 2) if cores > 1 else None)
        notes.append(f"load: {n_load - 1} permutations alone and beside one CPU-bound process; "
                     "in proportion to the cores taken, one busy core of "
                     f"{cores} slows the test by at most {cores}/{cores - 1}"
                     if cores > 1 else "load: one core only")
    # the same kernels with REML (SDM-PSI's AccurateHeterogeneity; the engine's former default)
    n_reml = max(2, min(n_perm, int(args.reml_permutations) + 1))
    r = psi_permutation_test(inputs, n_reml, seed=seed, n_jobs=args.n_jobs, backend=args.backend,
                             subject_images=subjects, heterogeneity="reml")
    t_reml = r.info["seconds_permutations"] / (n_reml - 1)
    metrics["heterogeneity"] = ours.info["heterogeneity"]
    metrics["reml_seconds_per_permutation"] = round(t_reml, 3)
    metrics["reml_extrapolated_seconds_1000"] = round(t_reml * 999, 1)
    ratios["reml_over_" + ours.info["heterogeneity"]] = round(t_reml / per_perm, 2)
    notes.append(f"REML timed on {n_reml - 1} permutations with the same workers, extrapolated")
    # NumPy backend on a few permutations (same data, same run)
    n_np = int(args.naive_permutations) + 1
    if args.backend != "numpy":
        r = psi_permutation_test(inputs, n_np, seed=seed, backend="numpy",
                                 subject_images=subjects)
        t_np = r.info["seconds_permutations"] / (n_np - 1)
        metrics["numpy_seconds_per_permutation"] = round(t_np, 3)
        ratios["numpy_over_" + args.backend] = round(t_np / per_perm, 2)
    # naive reference loop, timed on a few permutations and extrapolated
    codes = make_codes(inputs, n_np, derive_rng(seed, "psi/permutations"))
    t1 = time.perf_counter()
    naive = [naive_permutation(inputs, subjects, codes, b) for b in range(1, n_np)]
    t_naive = (time.perf_counter() - t1) / (n_np - 1)
    metrics["naive_seconds_per_permutation"] = round(t_naive, 2)
    ratios["naive_over_ours"] = round(t_naive / per_perm, 1)
    notes.append(f"naive loop timed on {n_np - 1} permutation(s), extrapolated per permutation")
    notes.append(f"ours ran with n_jobs={args.n_jobs}; the NumPy-backend and naive timings are of "
                 "a single permutation in one process: divide those ratios by n_jobs for a "
                 "per-core comparison")
    diff = np.abs(np.array(naive)[:, :2] - ours.maxima.iloc[1:n_np, 1:3].to_numpy())
    metrics["naive_max_z"] = np.round(np.array(naive)[:, :2], 4).tolist()
    metrics["ours_max_z"] = np.round(ours.maxima.iloc[1:n_np, 1:3].to_numpy(), 4).tolist()
    metrics["naive_vs_ours_max_abs_z_diff"] = float(diff.max())
    notes.append("the naive loop uses analysis.sdm.statistics.random_effects.fit_random_effects with the "
                 "same heterogeneity estimator (DerSimonian-Laird by default)")
    # NiMARE ALE Monte-Carlo FWE, fewer iterations, scaled linearly to the same count
    if args.nimare_iters > 0:
        try:
            t_small = _nimare_ale_fwe_seconds(ds, int(args.nimare_iters), int(args.n_jobs))
            per_iter = t_small / int(args.nimare_iters)
            metrics["nimare_ale_seconds_per_iteration"] = round(per_iter, 3)
            ratios["nimare_ale_montecarlo_over_ours"] = round(per_iter / per_perm, 2)
            notes.append(f"NiMARE ALE + FWECorrector(montecarlo) timed with n_iters="
                         f"{args.nimare_iters} (ALE fit included) and scaled per iteration; "
                         "ALE has no imputations, so this compares one FWE iteration of each")
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            notes.append(f"NiMARE benchmark failed: {exc!r}")
    metrics["target_met_3min_2cores"] = bool(per_perm * 999 <= 180)
    metrics["target_met_2x_roofline"] = bool(per_perm <= 2 * t_roof)
    # peak_rss_gb: after the fit and the timed test; the comparisons above (Freedman-Lane
    # parts, the NumPy back-end, NiMARE) add their own arrays
    metrics["peak_rss_gb_whole_benchmark"] = round(peak_rss_gb(), 2)
    metrics["target_met_3gb"] = bool(metrics["peak_rss_gb"] <= 3)
    return {"metrics": metrics, "ratios": ratios, "notes": notes}


@register("psi-enge", "null max-z/TFCE quantiles of our PSI on Enge et al. (2021) vs SDM-PSI")
def bench_psi_enge(args: argparse.Namespace) -> dict:
    """Our permutation null distribution against SDM-PSI v6.21's ``fwe/maxsMinsZ.asc``.

    The 50 studies of the public run are pre-processed and imputed by our engine (so the maps
    differ from SDM's: our bound maps and mean maps agree with SDM-PSI's only approximately) and
    permuted with ``--permutations`` permutations.
    """
    import nibabel as nib
    from scipy.stats import ks_2samp

    from analysis.config import load_config
    from analysis.fetch import fetch_dataset
    from analysis.sdm.inference.permutation import psi_permutation_test
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.stages import params

    cfg = load_config()
    folder = fetch_dataset("validation/enge2021_sdm")
    ds = SDMDataset.from_sdm_project(folder)
    mask = nib.load(folder / "sdm_mask.nii.gz")
    t0 = time.perf_counter()
    res = params.estimator(cfg, int(args.imputations), int(cfg["seed"]),
                           keep_imputations=True).fit(ds, mask_img=mask)
    t_fit = time.perf_counter() - t0
    tfce_fwhm = getattr(args, "tfce_subject_fwhm_mm", None)
    if tfce_fwhm is None:
        tfce_fwhm = params.psi_params(cfg)["tfce_subject_fwhm_mm"]
    perm = psi_permutation_test(res, int(args.permutations), seed=int(cfg["seed"]),
                                n_jobs=args.n_jobs, backend=args.backend,
                                subject_fwhm_mm=params.psi_params(cfg)["subject_fwhm_mm"],
                                tfce_subject_fwhm_mm=tfce_fwhm)
    sdm = np.loadtxt(folder / "analysis_mod1" / "fwe" / "maxsMinsZ.asc")
    ours = perm.maxima.to_numpy()[:, 1:]
    q = [5, 25, 50, 75, 95]
    metrics = {"studies": len(res.n1), "imputations": int(args.imputations),
               "permutations": int(args.permutations), "fit_seconds": round(t_fit, 1),
               "permutation_seconds": perm.info["seconds_permutations"],
               "subject_fwhm_mm": perm.info["subject_fwhm_mm"],
               "tfce_subject_fwhm_mm": perm.info["tfce_subject_fwhm_mm"]}
    for c, name in enumerate(["max_z", "max_neg_z", "max_tfce", "max_neg_tfce"]):
        metrics[f"{name}_observed_ours"] = round(float(ours[0, c]), 3)
        metrics[f"{name}_observed_sdm"] = round(float(sdm[0, c]), 3)
        metrics[f"{name}_null_quantiles_ours"] = np.round(np.percentile(ours[1:, c], q), 3).tolist()
        metrics[f"{name}_null_quantiles_sdm"] = np.round(np.percentile(sdm[1:, c], q), 3).tolist()
        metrics[f"{name}_ks_p"] = float(ks_2samp(ours[1:, c], sdm[1:, c]).pvalue)
    return {"metrics": metrics, "ratios": {},
            "notes": [f"quantiles {q} of the permuted rows (identity excluded); our bounds, "
                      "imputations and subject images are our own (SDM's templates are not "
                      "public), so only the order of magnitude is expected to agree"]}


