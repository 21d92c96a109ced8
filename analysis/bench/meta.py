"""Benchmark of the SDM mean analysis (issue: the 11-study analysis with 50 imputations).

Registered in ``python -m analysis bench`` as ``meta``. In one process it times

* the engine (:class:`analysis.sdm.estimator.SDMPSI`) on ``data/`` (11 studies, grey-matter
  mask, 50 imputations), after a small warm-up fit that compiles the numba kernels;
* the straightforward per-voxel reference of the same maths
  (:func:`analysis.sdm.reference.reference_meta`) on the first voxels of the same bound maps,
  extrapolated linearly to the whole mask (labelled as such);
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


@register("meta", "SDM mean analysis of data/ (50 imputations) vs per-voxel reference and NiMARE")
def bench_meta(args: argparse.Namespace) -> dict:
    from analysis import paths
    from analysis.config import load_config
    from analysis.grid import gm_mask
    from analysis.sdm.reference import reference_meta
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

    n_ref = 60
    b = res.bounds
    t0 = time.perf_counter()
    reference_meta(b.lower[:, :n_ref], b.upper[:, :n_ref], b.n1, b.n2,
                   imputations=imputations, rng=np.random.default_rng(0))
    t_ref = (time.perf_counter() - t0) * res.space.n_voxels / n_ref

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
                    "reference_s_extrapolated": round(t_ref, 1),
                    "nimare_mkda_density_s": None if t_nimare is None else round(t_nimare, 2)},
        "ratios": {"reference_over_engine": round(t_ref / t_engine, 1),
                   "nimare_over_engine": None if t_nimare is None
                   else round(t_nimare / t_engine, 2)},
        "notes": [f"reference timed on {n_ref} voxels and extrapolated to the mask", note,
                  "targets: engine < 20 s on 2 cores, peak memory < 4 GB"],
    }
