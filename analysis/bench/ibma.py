"""Peer cross-check: SDM-PSI with statistical maps only against NiMARE's image-based
meta-analysis, measured in one run.

When every study is a whole-brain map, nothing is censored (``lower == upper`` everywhere), every
imputation is the data itself, Rubin's between-imputation variance is 0, and the SDM-PSI mean
model is a random-effects meta-analysis of the studies' Hedges-g maps with the exact variance
``v = k1 + k2 g^2`` (:mod:`analysis.sdm.statistics.hedges`). On the same g and variance maps,
the engine's ``g``, ``z``, ``tau2`` must then equal NiMARE's
:class:`nimare.meta.ibma.DerSimonianLaird` (``beta`` = g, ``varcope`` = v, ``small_sample_correction="wald"``; maps ``est``, ``z``,
``tau2``), and its ``i2`` and ``q`` the heterogeneity statistics of PyMARE (NiMARE's back-end,
whose ``DerSimonianLaird`` NiMARE calls), to floating-point tolerance. (NiMARE 0.22's default small-sample correction, Knapp-Hartung
with a t reference on ``k - 1`` degrees of freedom, gives another z: SDM-PSI's SDM-Z is the Wald
statistic ``g / sqrt(var)``, Albajes-Eizagirre et al. 2019.) With
``heterogeneity="reml"`` (SDM-PSI's ``AccurateHeterogeneity``) the peer is
:class:`nimare.meta.ibma.VarianceBasedLikelihood` with ``method="reml"`` (an iterative optimum on
both sides: agreement to the optimisers' tolerance). NiMARE's ``Hedges`` estimator (Hedges'
1983 moment estimator of tau2) and ``Stouffers`` (a combination of z maps) fit models the
engine does not have, so they are not compared.

No unthresholded statistical maps ship with NiMARE or nilearn offline (NiMARE's test data hold
one ROI mask), so the maps are simulated by :func:`analysis.simulate.simulate_tmap` (smooth
noise converted to t, plus one planted effect), labelled as simulated.

Registered in ``python -m analysis bench`` as ``ibma``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.bench import register
from analysis.sdm.heap import frozen_heap

#: MNI centre of the planted effect of the simulated maps (left anterior insula)
EFFECT_XYZ = (-38.0, 16.0, -2.0)
#: half width (voxels) of the benchmark's cube of the grey-matter mask
SLAB_HALF = 12


def simulated_map_dataset(k: int, seed: int, cfg: dict | None = None, g: float = 0.4):
    """``k`` simulated studies, each a whole-brain t-map (no peaks; labelled simulated).

    Parameters
    ----------
    k : int
        Studies (every third one-sample).
    seed : int
        Seed of the sample sizes and the maps.
    cfg : dict, optional
        Configuration (:func:`analysis.config.load_config`; the simulation section).
    g : float
        Planted mean effect at :data:`EFFECT_XYZ`.

    Returns
    -------
    analysis.sdm.inputs.dataset.SDMDataset
    """
    import nibabel as nib

    from analysis.config import load_config
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.space import grid_affine
    from analysis.simulate import simulate_tmap

    cfg = load_config() if cfg is None else cfg
    rng = np.random.default_rng(seed)
    rows, images = [], {}
    effects = pd.DataFrame({"x": [EFFECT_XYZ[0]], "y": [EFFECT_XYZ[1]], "z": [EFFECT_XYZ[2]],
                            "g": [g]})
    for i in range(k):
        sid = f"sim{i + 1:02d}"
        n1 = int(rng.integers(14, 40))
        n2 = None if i % 3 == 2 else int(rng.integers(14, 40))
        tmap, _ = simulate_tmap(n1, n2, effects, rng, cfg)
        rows.append({"study": sid, "n1": n1, "n2": np.nan if n2 is None else n2, "t_thr": 3.0})
        images[sid] = nib.Nifti1Image(tmap.astype(np.float32), grid_affine())
    return SDMDataset(pd.DataFrame(rows), pd.DataFrame(
        columns=["study", "x", "y", "z", "t", "sign"]), images=images)


@frozen_heap()
def _nimare_ibma(g, v, space, heterogeneity: str, folder: Path):
    """NiMARE's IBMA of the g maps ``g`` with variances ``v`` (k, V), written as NIfTI (the
    heap frozen: nilearn's forced collections would walk this process' objects, not NiMARE's).
    """
    import nibabel as nib
    from nimare.dataset import Dataset
    from nimare.meta.ibma import DerSimonianLaird, VarianceBasedLikelihood

    data = {}
    for i in range(g.shape[0]):
        paths = {}
        for name, arr in (("beta", g[i]), ("varcope", v[i])):
            p = folder / f"s{i}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(space.to_volume(np.asarray(arr, np.float64)), space.affine),
                     p)
            paths[name] = str(p)
        data[f"s{i}"] = {"contrasts": {"1": {"images": paths}}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dset = Dataset(data, target="mni152_2mm", mask=space.mask_img)
        # SDM-PSI's z is g / sqrt(var) against the normal (Wald); NiMARE's default small-sample
        # correction (Knapp-Hartung, t reference) is another model
        est = (DerSimonianLaird(small_sample_correction="wald") if heterogeneity == "dl"
               else VarianceBasedLikelihood(method="reml", small_sample_correction="wald"))
        t0 = time.perf_counter()
        res = est.fit(dset)
        seconds = time.perf_counter() - t0
    return {name: res.get_map(name, return_type="array") for name in ("est", "z", "tau2")}, seconds


def compare_ibma(dataset, mask_img, heterogeneity: str = "dl", imputations: int = 2,
                 seed: int = 0) -> dict:
    """Engine vs NiMARE on a dataset whose every study is a map.

    Parameters
    ----------
    dataset : SDMDataset
        Map studies on the analysis grid.
    mask_img : nibabel image
        Analysis mask on the 2 mm grid, restricted to the voxels every map covers
        (:func:`covered_mask`).
    heterogeneity : {"dl", "reml"}
        Between-study variance of both sides.
    imputations : int
        The engine's imputations (all equal here).
    seed : int
        The engine's seed.

    Returns
    -------
    dict
        ``max_abs_diff`` per map (``g``, ``z``, ``tau2``, and for DL ``i2``, ``q``),
        ``max_rel_diff_z`` (where ``|z| > 1``), ``engine_s`` (the fit: MLE, imputation, meta-analysis),
        ``nimare_s`` (the estimator's fit, reading the maps from disk included), ``voxels``,
        ``studies``.
    """
    import pymare

    from analysis.sdm.estimator import SDMPSI
    from analysis.sdm.statistics.hedges import variance_coefficients

    mask_img = covered_mask(dataset, mask_img)
    est = SDMPSI(imputations=imputations, heterogeneity=heterogeneity, seed=seed)
    t0 = time.perf_counter()
    res = est.fit(dataset, mask_img=mask_img)
    engine_s = time.perf_counter() - t0
    if not res.bounds.known.all():
        raise ValueError("a voxel of the mask is not covered by every map")
    g = res.bounds.lower.astype(np.float64)
    k1, k2 = variance_coefficients(res.n1, res.n2)
    v = k1[:, None] + k2[:, None] * g * g
    with tempfile.TemporaryDirectory() as tmp:
        peer, nimare_s = _nimare_ibma(g, v, res.space, heterogeneity, Path(tmp))
    ours = res.maps
    diff = {"g": np.abs(ours["g"] - peer["est"]).max(), "z": np.abs(ours["z"] - peer["z"]).max(),
            "tau2": np.abs(ours["tau2"] - peer["tau2"]).max()}
    if heterogeneity == "dl":
        het = pymare.estimators.DerSimonianLaird().fit_dataset(
            pymare.Dataset(y=g, v=v)).summary().get_heterogeneity_stats()
        diff["i2"] = np.abs(ours["i2"] - het["I^2"]).max()
        diff["q"] = np.abs(ours["q"] - het["Q"]).max()
    big = np.abs(peer["z"]) > 1  # relative differences where z is not near 0
    rel_z = np.abs(ours["z"] - peer["z"])[big] / np.abs(peer["z"])[big]
    return {"max_abs_diff": {k: float(v) for k, v in diff.items()},
            "max_rel_diff_z": float(rel_z.max()) if rel_z.size else 0.0, "engine_s": engine_s, "nimare_s": nimare_s,
            "voxels": res.space.n_voxels, "studies": len(res.studies),
            "z_range": (float(ours["z"].min()), float(ours["z"].max()))}


@register("ibma", "maps-only SDM-PSI vs NiMARE DerSimonianLaird / REML on the same g maps")
def bench_ibma(args: argparse.Namespace) -> dict:
    from analysis.config import load_config
    from analysis.grid import gm_mask

    cfg = load_config()
    k = int(getattr(args, "ibma_studies", 20) or 20)
    dataset = simulated_map_dataset(k, seed=int(cfg.get("seed", 0)), cfg=cfg)
    # a cube of the grey-matter mask around the planted effect: NiMARE's fits took about 3 ms a
    # voxel here (the whole mask would take about 10 minutes per estimator)
    mask = _small_mask(gm_mask(cfg["sdm"]["mask"]), half=SLAB_HALF)
    from analysis.sdm.estimator import SDMPSI

    SDMPSI(imputations=2).fit(dataset.subset(dataset.ids[:3]),
                              mask_img=_small_mask(mask))  # compile the kernels
    metrics, ratios = {}, {}
    for het in ("dl", "reml"):
        r = compare_ibma(dataset, mask, heterogeneity=het)
        for name, val in r["max_abs_diff"].items():
            metrics[f"{het} max |diff| {name}"] = f"{val:.2e}"
        metrics[f"{het} max relative diff z"] = f"{r['max_rel_diff_z']:.2e}"
        metrics[f"{het} engine s"] = round(r["engine_s"], 2)
        metrics[f"{het} NiMARE s"] = round(r["nimare_s"], 2)
        ratios[f"{het} engine / NiMARE time"] = round(r["engine_s"] / r["nimare_s"], 2)
    metrics["studies"], metrics["voxels"] = k, r["voxels"]
    return {"metrics": metrics, "ratios": ratios, "notes": [
        "simulated t-maps (analysis.simulate.simulate_tmap), not real studies; no statistical "
        "maps ship offline with NiMARE or nilearn",
        f"mask: a {2 * SLAB_HALF}-voxel cube of the grey-matter mask around {EFFECT_XYZ}, "
        "restricted to the voxels every simulated map covers",
        "engine time: the whole fit (MetaNSUE MLE on exact data, 2 identical imputations, "
        "random effects, Rubin); NiMARE time: the estimator's fit, reading the NIfTI maps "
        "from disk included"]}


def covered_mask(dataset, mask_img):
    """``mask_img`` restricted to the voxels where every map of ``dataset`` (on the mask's
    grid) has a finite non-zero value.
    """
    import nibabel as nib

    keep = np.asarray(mask_img.dataobj) > 0
    for img in dataset.images.values():
        data = np.asarray(img.dataobj)
        keep &= np.isfinite(data) & (data != 0)
    return nib.Nifti1Image(keep.astype(np.uint8), mask_img.affine)


def _small_mask(mask, half: int = 5):
    """A ``2 half``-voxel-wide cube of ``mask`` around :data:`EFFECT_XYZ`."""
    import nibabel as nib

    from analysis.sdm.maps.space import nearest_voxel

    data = np.zeros(mask.shape, np.uint8)
    i, j, kk = nearest_voxel([EFFECT_XYZ], mask.affine)[0]
    data[i - half:i + half, j - half:j + half, kk - half:kk + half] = 1
    return nib.Nifti1Image(data * (np.asarray(mask.dataobj) > 0), mask.affine)
