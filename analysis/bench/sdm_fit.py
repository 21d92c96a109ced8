"""Benchmark of the SDM mean analysis (the 11-study analysis with 50 imputations).

Registered in ``python -m analysis bench`` as ``meta``. In one process it times

* the engine (:class:`analysis.sdm.estimator.SDMPSI`) on ``data/`` (11 studies, grey-matter
  mask, 50 imputations), after a small warm-up fit that compiles the numba kernels;
* NiMARE's ``MKDADensity`` fit (no correction) on the same MNI peaks, as the familiar
  point of comparison for a coordinate-based meta-analysis.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analysis.bench import peak_rss_gb, register


def _nimare_dataset(dataset):
    from nimare.dataset import Dataset

    studies = {}
    for sid in dataset.ids:
        p = dataset.study_peaks(sid)
        row = dataset.studies.set_index("study").loc[sid]
        n = int(row["n1"] + (0 if np.isnan(row["n2"]) else row["n2"]))
        studies[sid] = {"contrasts": {"1": {
            "coords": {"space": "MNI", "x": p["x"].tolist(), "y": p["y"].tolist(),
                       "z": p["z"].tolist()},
            "metadata": {"sample_sizes": [n]}}}}
    return Dataset(studies)


@register("meta", "SDM mean analysis of data/ (50 imputations) vs NiMARE")
def bench_meta(args: argparse.Namespace) -> dict:
    from analysis import paths
    from analysis.config import load_config
    from analysis.grid import gm_mask
    from analysis.stages import params

    cfg = load_config()
    imputations = int(getattr(args, "imputations", 50) or 50)
    dataset = params.compendium_dataset(paths.data_dir(), cfg)
    mask = gm_mask(cfg["sdm"]["mask"])
    params.estimator(cfg, 2, 1).fit(dataset.subset(dataset.ids[:3]),
                                    mask_img=mask)  # compile kernels
    t0 = time.perf_counter()
    res = params.estimator(cfg, imputations, 1, keep_imputations=False).fit(dataset,
                                                                             mask_img=mask)
    t_engine = time.perf_counter() - t0
    rss = peak_rss_gb()

    t_nimare = None
    try:
        from nimare.meta.cbma.mkda import MKDADensity

        nds = _nimare_dataset(dataset)
        t0 = time.perf_counter()
        MKDADensity().fit(nds)
        t_nimare = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - the comparison is optional
        note = f"NiMARE MKDADensity failed: {exc}"
    else:
        note = "NiMARE MKDADensity: fit only (10 mm spheres), no multiple imputation"
    return {
        "metrics": {"studies": len(dataset.ids), "voxels": res.space.n_voxels,
                    "imputations": imputations, "engine_s": round(t_engine, 2),
                    "engine_stages_s": res.timings, "peak_rss_gb": round(rss, 2),
                    "nimare_mkda_density_s": None if t_nimare is None else round(t_nimare, 2)},
        "ratios": {"nimare_over_engine": None if t_nimare is None
                   else round(t_nimare / t_engine, 2)},
        "notes": [note,
                  "targets: engine < 20 s on 2 cores, peak memory < 4 GB"],
    }


#: covariates of the covariate-adjusted mean of Enge et al. (2021) timed by ``meta-covariates``
ENGE_COVARIATES = ["age_mean_c", "age_mean_c_2", "task_type", "modality_pres"]


def _enge_covariate_slab(args: argparse.Namespace):
    """SDM-PSI's bound maps of Enge et al. (2021) on the first ``--covariate-voxels`` voxels of
    SDM's mask (0: the whole mask) and the design ``[1, ENGE_COVARIATES]``: ``(dataset, full
    space, slab space, voxels, lower, upper, X, design column names, n1, n2)``.
    """
    import nibabel as nib

    from analysis.fetch import fetch_dataset
    from analysis.sdm.estimator import design_matrix
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.preprocess import read_bound_maps
    from analysis.sdm.maps.space import MaskSpace

    folder = fetch_dataset("validation/enge2021_sdm")
    ds = SDMDataset.from_sdm_project(folder)
    full = MaskSpace(nib.load(folder / "sdm_mask.nii.gz"))
    n_vox = int(getattr(args, "covariate_voxels", 0) or 0) or full.n_voxels
    n_vox = min(n_vox, full.n_voxels)
    slab = np.zeros(full.shape, dtype=np.uint8)
    slab[tuple(full.ijk[:n_vox].T)] = 1
    space = MaskSpace(nib.Nifti1Image(slab, full.affine))
    lower, upper = read_bound_maps(folder / "pp", ds.ids, space)
    studies = ds.studies.set_index("study").loc[ds.ids].reset_index()
    X, names = design_matrix(studies, ENGE_COVARIATES)
    n1 = studies["n1"].to_numpy(float)
    n2 = studies["n2"].to_numpy(float)
    return ds, full, space, n_vox, lower, upper, X, names, n1, n2


@register("meta-covariates", "covariate-adjusted mean and age meta-regression of Enge et al. "
          "(2021), whole mask: compiled fit vs the NumPy core, MLE and pooling")
def bench_meta_covariates(args: argparse.Namespace) -> dict:
    """SDM-PSI's own bound maps of Enge et al. (2021, ``pp/``; 50 studies) with the design
    ``[1, age, age^2, task type, presentation modality]`` (centred) and the intercept as
    hypothesis: the whole fit on the whole mask at ``--imputations`` (default 50) with
    ``--n-jobs`` threads, measured, not extrapolated, and likewise the meta-regression on age
    alone (``[1, age]``, hypothesis on the slope). Then, in the same process, on the first
    ``--covariate-voxels`` voxels of the mask (mask order): the pooling of the fit's imputations
    by the compiled general-design kernel
    (:func:`analysis.sdm.statistics.re_kernels.pooled_fit`) against the statistics core
    (:func:`~analysis.sdm.statistics.random_effects.fit_random_effects` and
    :func:`~analysis.sdm.statistics.rubin.pool_fits`, one imputation at a time), with their
    largest difference in z; and the covariate MLE against its NumPy path and against the
    intercept-only MLE.
    """
    from analysis.config import load_config
    from analysis.sdm.statistics.hedges import variance_coefficients
    from analysis.sdm.statistics.hypothesis import hypothesis_row
    from analysis.sdm.statistics.metansue.mle import censored_mle
    from analysis.sdm.statistics.random_effects import fit_random_effects
    from analysis.sdm.statistics.re_kernels import pooled_fit
    from analysis.sdm.statistics.rubin import pool_fits
    from analysis.stages import params

    cfg = load_config()
    whole = argparse.Namespace(covariate_voxels=0)
    ds, full, space, n_vox, lower, upper, X, names, n1, n2 = _enge_covariate_slab(whole)
    imputations = int(args.imputations)
    n_jobs = int(args.n_jobs)
    est = params.estimator(cfg, imputations, 1, n_jobs=n_jobs, keep_imputations=True)
    # compile the kernels on a few voxels (cached by numba after the first run)
    censored_mle(lower[:, :64], upper[:, :64], n1, n2, X)
    t0 = time.perf_counter()
    res = est.fit_bounds(lower, upper, n1, n2, space, X=X, studies=list(ds.ids))
    t_fit = time.perf_counter() - t0
    rss = peak_rss_gb()
    # the meta-regression on age alone (design [1, age], hypothesis on the slope)
    reg = params.estimator(cfg, imputations, 1, n_jobs=n_jobs, keep_imputations=False,
                           hypothesis=[0, 1])
    t0 = time.perf_counter()
    age = reg.fit_bounds(lower, upper, n1, n2, space, X=X[:, :2], studies=list(ds.ids))
    t_age = time.perf_counter() - t0
    # the pooling stage on a slab: compiled kernel vs the core
    n_slab = min(int(getattr(args, "covariate_voxels", 0) or 0) or full.n_voxels, full.n_voxels)
    G = np.ascontiguousarray(res.imputations[:, :, :n_slab])
    k1, k2 = variance_coefficients(n1, n2)
    C = hypothesis_row(None, X.shape[1])
    pooled_fit(G[:, :, :64], k1, k2, X, C)  # compile
    t0 = time.perf_counter()
    fast = pooled_fit(G, k1, k2, X, C, n_jobs=1)
    t_pool = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = G.astype(np.float64)
    core = pool_fits(fit_random_effects(y, k1[:, None] + k2[:, None] * y * y, X, C), C)
    t_core = time.perf_counter() - t0
    dz = float(np.nanmax(np.abs(fast["z"] - core["z"])))
    # the MLE: covariates vs intercept only (compiled), and the NumPy path on a tenth
    lo, up = lower[:, :n_slab], upper[:, :n_slab]
    t0 = time.perf_counter()
    censored_mle(lo, up, n1, n2, X)
    t_mle = (time.perf_counter() - t0) / n_slab
    censored_mle(lo[:, :64], up[:, :64], n1, n2)  # the intercept-only kernel, loaded
    t0 = time.perf_counter()
    censored_mle(lo, up, n1, n2)
    t_mean = (time.perf_counter() - t0) / n_slab
    n_np = max(n_slab // 10, 1)
    t0 = time.perf_counter()
    censored_mle(lo[:, :n_np], up[:, :n_np], n1, n2, X, compiled=False)
    t_np = (time.perf_counter() - t0) / n_np
    metrics = {"studies": len(ds.ids), "design_columns": names, "imputations": imputations,
               "n_jobs": n_jobs, "mask_voxels": full.n_voxels,
               "fit_seconds_whole_mask": round(t_fit, 1), "fit_stages_s": res.timings,
               "target_met_2min_2cores": bool(t_fit <= 120), "peak_rss_gb": round(rss, 2),
               "age_metaregression_seconds_whole_mask": round(t_age, 1),
               "age_metaregression_stages_s": age.timings,
               "age_metaregression_target_met_2min_2cores": bool(t_age <= 120),
               "slab_voxels": n_slab,
               "pooling_compiled_s_slab_one_thread": round(t_pool, 2),
               "pooling_numpy_core_s_slab": round(t_core, 2),
               "pooling_max_abs_dz_compiled_vs_core": dz,
               "mle_numpy_voxels_timed": n_np}
    return {"metrics": metrics,
            "ratios": {"pooling_numpy_core_over_compiled": round(t_core / t_pool, 2),
                       "mle_numpy_over_compiled": round(t_np / t_mle, 2),
                       "mle_covariates_over_intercept_only": round(t_mle / t_mean, 2)},
            "notes": ["the whole fit is measured on the whole mask; the pooling and MLE "
                      f"comparisons on the first {n_slab} voxels of SDM's mask (mask order)",
                      "pooling: compiled general-design kernel on one thread vs the NumPy core "
                      "(one imputation at a time), on the fit's own imputations",
                      "NumPy MLE path timed on a tenth of the slab; the intercept-only MLE on "
                      "the slab (its own compiled kernel)"]}


#: studies of SDM-PSI's Enge et al. (2021) bound maps in ``shared-noise`` (the first, in order)
SHARED_NOISE_STUDIES = 11
#: leave-one-out re-fits timed by ``shared-noise``
SHARED_NOISE_REFITS = 3


@register("shared-noise", "leave-one-out re-fits drawing the imputation noise fields once "
          "(shared NoiseFields) vs each fit drawing its own")
def bench_shared_noise(args: argparse.Namespace) -> dict:
    """The main fit and :data:`SHARED_NOISE_REFITS` leave-one-out re-fits of the first
    :data:`SHARED_NOISE_STUDIES` studies of SDM-PSI's own bound maps of Enge et al. (2021),
    whole mask, ``--imputations`` (default 50): once with one
    :meth:`~analysis.sdm.estimator.SDMPSI.noise_fields` object shared by all fits (as the
    robustness stage), once with every fit drawing its own fields (as before); the imputed maps
    must be identical. The ratio compares the re-fits only (the main fit draws the fields in
    both).
    """
    from analysis.config import load_config
    from analysis.stages import params

    cfg = load_config()
    whole = argparse.Namespace(covariate_voxels=0)
    ds, full, space, n_vox, lower, upper, X, names, n1, n2 = _enge_covariate_slab(whole)
    k = SHARED_NOISE_STUDIES
    lower, upper, n1, n2 = lower[:k], upper[:k], n1[:k], n2[:k]
    est = params.estimator(cfg, int(args.imputations), 1, n_jobs=int(args.n_jobs))
    subsets = [np.delete(np.arange(k), i) for i in range(SHARED_NOISE_REFITS)]
    secs, z = {}, {}
    for label in ("own", "shared"):
        noise = est.noise_fields(space) if label == "shared" else None
        est.fit_bounds(lower, upper, n1, n2, space, noise=noise)
        t0 = time.perf_counter()
        z[label] = [est.fit_bounds(lower[idx], upper[idx], n1[idx], n2[idx], space,
                                   noise=noise).maps["z"] for idx in subsets]
        secs[label] = time.perf_counter() - t0
    identical = all(np.array_equal(a, b) for a, b in zip(z["own"], z["shared"], strict=True))
    if not identical:
        raise AssertionError("re-fits with shared noise fields differ from their own draws")
    return {"metrics": {"studies": k, "refits": SHARED_NOISE_REFITS,
                        "imputations": int(args.imputations), "voxels": full.n_voxels,
                        "refits_own_fields_s": round(secs["own"], 2),
                        "refits_shared_fields_s": round(secs["shared"], 2),
                        "z_maps_identical": identical, "peak_rss_gb": round(peak_rss_gb(), 2)},
            "ratios": {"own_over_shared": round(secs["own"] / secs["shared"], 2)},
            "notes": ["SDM-PSI's bound maps of the first studies of Enge et al. (2021), "
                      "leave-one-out of each of the first studies in turn"]}


@register("mle-fast", "MetaNSUE MLE of Enge et al. (2021), intercept-only and 4 covariates: "
          "fast path vs exact path")
def bench_mle_fast(args: argparse.Namespace) -> dict:
    """SDM-PSI's own bound maps of Enge et al. (2021, ``pp/``; 50 studies, 3 leave-n-out
    rounds) on a slab of ``--covariate-voxels`` voxels of SDM's mask (the first in mask order;
    0: the whole mask): :func:`~analysis.sdm.statistics.metansue.mle.censored_mle` with
    ``method="exact"`` and ``method="fast"`` timed one after the other in this process, for the
    intercept-only model and the design ``[1, age, age^2, task type, presentation modality]``.
    Also reported: the largest differences of the hypothesis coefficient and tau2 between the
    paths and the share of voxels where a different study was discarded. Whole-mask times are
    extrapolated linearly from the slab (labelled as such).
    """
    from analysis.sdm.statistics.metansue.mle import censored_mle

    ds, full, space, n_vox, lower, upper, X, names, n1, n2 = _enge_covariate_slab(args)
    scale = full.n_voxels / n_vox
    metrics = {"studies": len(ds.ids), "design_columns": names, "voxels_timed": n_vox,
               "mask_voxels": full.n_voxels}
    ratios = {}
    for label, design in (("intercept", None), ("covariates", X)):
        for method in ("exact", "fast"):  # compile the kernels (cached by numba)
            censored_mle(lower[:, :64], upper[:, :64], n1, n2, design, method=method)
        out, secs = {}, {}
        for method in ("exact", "fast"):
            t0 = time.perf_counter()
            out[method] = censored_mle(lower, upper, n1, n2, design, method=method)
            secs[method] = time.perf_counter() - t0
        e, f = out["exact"], out["fast"]
        metrics[f"{label}_exact_s"] = round(secs["exact"], 2)
        metrics[f"{label}_fast_s"] = round(secs["fast"], 2)
        metrics[f"{label}_fast_s_whole_mask_extrapolated"] = round(secs["fast"] * scale, 1)
        metrics[f"{label}_exact_s_whole_mask_extrapolated"] = round(secs["exact"] * scale, 1)
        metrics[f"{label}_max_abs_d_hypothesis_coef"] = float(
            np.abs((e["beta"] - f["beta"]) @ e["C"]).max())
        metrics[f"{label}_max_rel_d_tau2"] = float(
            (np.abs(e["tau2"] - f["tau2"]) / np.maximum(e["tau2"], 1e-12))[e["tau2"] > 1e-6].max(
                initial=0.0))
        metrics[f"{label}_share_other_discards"] = float(
            (e["discarded"] != f["discarded"]).any(0).mean())
        ratios[f"mle_{label}_exact_over_fast"] = round(secs["exact"] / secs["fast"], 2)
    return {"metrics": metrics, "ratios": ratios,
            "notes": [f"the first {n_vox} voxels of SDM's mask in mask order (a slab); "
                      "whole-mask figures scale the slab's times linearly",
                      "the acceptance of the fast path (r(z), max |dz| after 50 imputations) is "
                      "tested in tests/test_sdm_validation.py"]}
