"""Stretch template of the anisotropic kernel fitted on SDM-PSI's own study maps.

SDM-PSI's correlation templates (Radua et al. 2014, Front Psychiatry 5:13) are distributed only
with its binaries, but its bound maps reveal its kernel: with one kernel weight ``K`` and one
effect ``g`` per voxel (:mod:`analysis.sdm.maps.preprocess`), ``upper - lower = 2 g_thr (1 - K)``, so
``K = 1 - (upper - lower) / (2 g_thr)`` whatever the peaks' effects, and for several peaks
``K = max_p K_p``. The public SDM-PSI v6.21 run of Enge et al. (2021, NeuroImage 241:118436;
mirrored dataset ``validation/enge2021_sdm``) holds these maps for 50 studies (687 peaks).

Model (:class:`analysis.sdm.maps.kernel.AnisotropicKernel`, ``path_model="gaussian"``)
    ``K = exp(-D^2 / (2 sigma^2))`` with ``D`` the shortest path from the peak voxels through
    the 26-neighbour mask graph whose edges have length ``l * s``. The implied distance
    ``D = sigma sqrt(2 ln 1/K)`` of a study is then a multi-source geodesic distance, and along
    every edge ``|D(v) - D(u)| <= l s(u, v)`` with equality on the edge the shortest path
    arrives by.

Fit (:func:`fit_edge_stretch`, :func:`assemble_stretch`)
    For every training study and edge, the slope ``|D(v) - D(u)| / l`` is a lower bound of the
    edge's stretch, exact on the edge of steepest arrival into a voxel. An edge that was the
    steepest way into a voxel in at least one training study takes the largest slope seen along
    it (47 % of the 2.35 million edges of SDM's grey-matter mask); every other edge takes the
    mean of its two voxels' median steepest slopes (over studies), never less than its largest
    observed slope; voxels no training study reached (0.3 %) take the median voxel slope
    (0.87). No other parameter is fitted on the maps; the stretch outside the mask
    (``outside_stretch``, :mod:`analysis.sdm.maps.kernel`) was chosen on the training studies among
    1.0, 1.5, 2.0.

Split (:func:`split_studies`)
    Studies sorted by id; even positions (0, 2, ...) train, odd positions are held out. The
    engine's default template (``"enge_fit"`` of :mod:`analysis.sdm.maps.templates`, shipped
    precomputed; :func:`analysis.resources.write_stretch_resource` rebuilds it) is fitted on the
    training half only, so the held-out figures of :func:`evaluate` describe it.

Limits (measured, :func:`evaluate`): see the bound-map agreement tests with SDM-PSI's maps in
``tests/test_sdm_preprocess.py``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from analysis.sdm.maps.kernel import OFFSETS, TRUNCATE, fwhm_to_sigma, mask_edges
from analysis.sdm.maps.space import MaskSpace

LGR = logging.getLogger(__name__)

#: bump when the fit changes (part of the compendium's cache key)
FIT_VERSION = 1


def observed_kernel(lower, upper, g_thr) -> np.ndarray:
    """Kernel weight implied by a pair of bound maps: ``K = 1 - (upper - lower) / (2 g_thr)``."""
    return 1.0 - (np.asarray(upper, float) - np.asarray(lower, float)) / (2.0 * float(g_thr))


def virtual_distance(k, sigma) -> np.ndarray:
    """``D = sigma sqrt(2 ln 1/K)``; NaN where ``K`` is truncated (``< TRUNCATE``)."""
    k = np.asarray(k, dtype=float)
    out = np.full(k.shape, np.nan)
    ok = k >= TRUNCATE * (1 - 1e-3)
    out[ok] = sigma * np.sqrt(2.0 * np.log(1.0 / np.clip(k[ok], 1e-300, 1.0)))
    return out


def fit_edge_stretch(space: MaskSpace, kernels, sigma: float, *, plateau: float = 1e-5):
    """Edge stretch that reproduces observed kernels as Gaussians of a shortest-path length.

    Parameters
    ----------
    space : MaskSpace
        Voxel space of the kernels.
    kernels : iterable of numpy.ndarray, shape (V,)
        Observed kernel maps ``K`` (:func:`observed_kernel`), one per study.
    sigma : float
        Gaussian sigma (mm).
    plateau : float
        ``K > 1 - plateau`` is a peak voxel (``D = 0``).

    Returns
    -------
    stretch : numpy.ndarray, shape (E,)
        Stretch per edge of :func:`mask_edges` (NaN where no study informs the edge).
    n_tree : numpy.ndarray, shape (E,)
        Number of studies in which the edge is the steepest way into its far voxel.
    voxel : numpy.ndarray, shape (V,)
        Median over studies of each voxel's steepest incoming slope (NaN where uninformed).
    """
    src, dst, _, length = mask_edges(space)
    ne, nv = len(src), space.n_voxels
    lower_bound = np.zeros(ne)
    tree_sum = np.zeros(ne)
    n_tree = np.zeros(ne, dtype=np.int32)
    slopes = []
    for k in kernels:
        d = virtual_distance(k, sigma)
        d[np.asarray(k) > 1.0 - plateau] = 0.0
        du, dv = d[src], d[dst]
        ok = np.nonzero(np.isfinite(du) & np.isfinite(dv))[0]
        sl = (dv[ok] - du[ok]) / length[ok]
        lower_bound[ok] = np.maximum(lower_bound[ok], np.abs(sl))
        # steepest incoming edge of every voxel reached by the study (the upwind edge)
        vox = np.concatenate([dst[ok], src[ok]])
        slo = np.concatenate([sl, -sl])
        eid = np.concatenate([ok, ok])
        keep = slo > 0
        vox, slo, eid = vox[keep], slo[keep], eid[keep]
        order = np.lexsort((slo, vox))
        last = np.r_[vox[order][1:] != vox[order][:-1], True]
        best_e, best_s = eid[order][last], slo[order][last]
        tree_sum[best_e] += best_s
        n_tree[best_e] += 1
        per_voxel = np.full(nv, np.nan)
        per_voxel[vox[order][last]] = best_s
        per_voxel[d == 0] = np.nan
        slopes.append(per_voxel.astype(np.float32))
    voxel = _nanmedian_rows(np.stack(slopes)) if slopes else np.full(nv, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        stretch = np.where(n_tree > 0, tree_sum / n_tree, np.nan)
    stretch = np.where(np.isfinite(stretch), np.maximum(stretch, lower_bound), stretch)
    return stretch, n_tree, voxel, lower_bound


def _nanmedian_rows(a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[1], np.nan)
    has = np.isfinite(a).any(axis=0)
    out[has] = np.nanmedian(a[:, has], axis=0)
    return out


def assemble_stretch(space: MaskSpace, stretch, n_tree, voxel, lower_bound,
                     scale: float = 1.0, fallback: float | None = None) -> np.ndarray:
    """(13, X, Y, Z) stretch template from the fitted edge values.

    Edges that were the steepest way into a voxel in some study keep their fitted value; the
    others take the mean of their two voxels' median slopes, never less than the largest slope
    observed along them; voxels no study reached take ``fallback`` (default: the median voxel
    slope). Everything is multiplied by ``scale``.
    """
    src, dst, noff, _ = mask_edges(space)
    fb = float(np.nanmedian(voxel)) if fallback is None else float(fallback)
    sv = np.where(np.isfinite(voxel), voxel, fb)
    other = np.maximum(0.5 * (sv[src] + sv[dst]), lower_bound)
    edge = np.where(n_tree > 0, stretch, other) * scale
    out = np.full((len(OFFSETS), *space.shape), fb * scale, dtype=np.float32)
    out[(noff, *space.ijk[src].T)] = edge
    return out


def split_studies(ids) -> tuple[list, list]:
    """Fixed split: sort the ids, even positions train, odd positions are held out."""
    order = sorted(ids)
    return order[0::2], order[1::2]


def load_enge(folder):
    """SDM-PSI's Enge et al. (2021) project: dataset, mask space and bound maps.

    Parameters
    ----------
    folder : path-like
        The project folder with SDM-PSI's ``pp/`` bound maps and ``sdm_mask.nii.gz``
        (the compendium fetches it as dataset ``validation/enge2021_sdm``).

    Returns
    -------
    dataset : SDMDataset
    space : MaskSpace
        SDM's ``gray_matter_2mm`` mask (193,768 voxels).
    lower, upper : numpy.ndarray, float64, shape (50, V)
        SDM-PSI v6.21's bound maps, rows in ``dataset.ids`` order.
    g_thr : numpy.ndarray, shape (50,)
    """
    from pathlib import Path

    import nibabel as nib

    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.preprocess import read_bound_maps
    from analysis.sdm.statistics.effect_sizes import g_from_t

    folder = Path(folder)
    ds = SDMDataset.from_sdm_project(folder)
    space = MaskSpace(nib.load(folder / "sdm_mask.nii.gz"))
    lo, up = (a.astype(float) for a in read_bound_maps(folder / "pp", ds.ids, space))
    st = ds.studies
    n2 = st["n2"].to_numpy(dtype=float)
    g_thr = np.array([g_from_t(t, n1, None if not np.isfinite(b) else b) for t, n1, b in
                      zip(st["t_thr"].to_numpy(float), st["n1"].to_numpy(float), n2)])
    return ds, space, lo, up, g_thr


def fit_enge_template(folder, fwhm: float = 20.0) -> tuple[np.ndarray, dict]:
    """Fit the stretch template on the training half of Enge et al. (2021) (module docstring).

    Returns
    -------
    stretch : numpy.ndarray, shape (13, X, Y, Z), float32
    meta : dict
        Training studies, coverage figures and the run time.
    """
    t0 = time.perf_counter()
    ds, space, lo, up, g_thr = load_enge(folder)
    train, _ = split_studies(ds.ids)
    rows = [ds.ids.index(s) for s in train]
    kernels = [observed_kernel(lo[i], up[i], g_thr[i]) for i in rows]
    fit = fit_edge_stretch(space, kernels, fwhm_to_sigma(fwhm))
    stretch = assemble_stretch(space, *fit)
    meta = dict(train=list(train), edges=int(len(fit[0])),
                edges_steepest=float(np.mean(fit[1] > 0)),
                voxels_reached=float(np.mean(np.isfinite(fit[2]))),
                fallback=float(np.nanmedian(fit[2])), seconds=time.perf_counter() - t0)
    return stretch, meta


def bound_correlation(lower, upper, sdm_lower, sdm_upper) -> float:
    """Bound-map agreement: mean of the voxelwise Pearson r of the lower and of the upper maps."""
    return 0.5 * (np.corrcoef(lower, sdm_lower)[0, 1] + np.corrcoef(upper, sdm_upper)[0, 1])


def outside_mask_peaks(ds, space: MaskSpace, lower, upper, g_thr, sigma: float):
    """Peaks whose rounded position has no in-mask voxel, with what SDM-PSI did with them.

    Returns a DataFrame with, per such peak: distance to the nearest mask voxel (mm), SDM's
    ``K`` there, its implied distance ``D``, the number of SDM ``K = 1`` voxels within 3 mm of
    the peak and the distance of the highest ``K`` within 12 mm.
    """
    import pandas as pd

    from analysis.sdm.maps.kernel import _tree, peak_position, peak_voxels

    rows = []
    tree = _tree(space)
    for i, s in enumerate(ds.ids):
        k = observed_kernel(lower[i], upper[i], g_thr[i])
        pk = ds.study_peaks(s)[["x", "y", "z"]].to_numpy(dtype=float)
        for j, p in enumerate(pk):
            pos = peak_position(p)
            if peak_voxels(pos, space).size:
                continue
            others = np.delete(pk, j, axis=0)
            d_other = np.linalg.norm(others - p, axis=1).min() if len(others) else np.inf
            dn, vn = tree.query(pos)
            near = np.asarray(tree.query_ball_point(pos, 12.0), dtype=np.int64)
            near = near if near.size else np.array([vn])
            am = near[np.argmax(k[near])]
            within3 = np.asarray(tree.query_ball_point(pos, 3.0), dtype=np.int64)
            rows.append(dict(study=s, peak=j, nearest_other_peak_mm=d_other, to_mask_mm=dn,
                             k_nearest=k[vn], d_nearest=float(virtual_distance(k[vn], sigma)),
                             k1_within_3mm=int(np.sum(k[within3] > 1 - 1e-5)),
                             argmax_mm=float(np.linalg.norm(space.xyz[am] - pos))))
    return pd.DataFrame(rows)


def evaluate(folder, *, template=None, outside_stretch: float = 1.5,
             baselines: bool = True, progress: bool = False):
    """Fit on the training half, report per-study agreement with SDM-PSI on both halves.

    Parameters
    ----------
    folder : path-like
        The Enge project folder (:func:`load_enge`).
    template : numpy.ndarray, optional
        Stretch template to evaluate (default: :func:`fit_enge_template` on the training half).
    outside_stretch : float
        Stretch of the straight segments from a peak outside the mask.
    baselines : bool
        Also evaluate the isotropic 20 mm kernel and the tissue template ``gray_matter``.

    Returns
    -------
    table : pandas.DataFrame
        One row per study: ``half`` (train/test), number of peaks, ``r`` of the fitted model
        and, with ``baselines``, ``r_isotropic`` and ``r_gray_matter``.
    info : dict
        Run times (s) of pre-processing all 50 studies per kernel and the fit's metadata.
    """
    import pandas as pd

    from analysis.sdm.maps.kernel import IsotropicKernel, make_kernel
    from analysis.sdm.maps.preprocess import preprocess

    ds, space, lo, up, g_thr = load_enge(folder)
    train, test = split_studies(ds.ids)
    info = {}
    if template is None:
        template, info["fit"] = fit_enge_template(folder)
    kernels = {"r": make_kernel(space, template=template, outside_stretch=outside_stretch)}
    if baselines:
        kernels["r_isotropic"] = IsotropicKernel(space)
        kernels["r_gray_matter"] = make_kernel(space, template="gray_matter",
                                               outside_stretch=outside_stretch)
    table = pd.DataFrame({"study": ds.ids,
                          "half": ["train" if s in train else "test" for s in ds.ids],
                          "peaks": [len(ds.study_peaks(s)) for s in ds.ids]})
    for name, kern in kernels.items():
        t0 = time.perf_counter()
        b = preprocess(ds, space, kernel=kern, unknown_peak_mode="sdm621", progress=progress)
        info[f"seconds_{name}"] = time.perf_counter() - t0
        table[name] = [bound_correlation(b.lower[i], b.upper[i], lo[i], up[i])
                       for i in range(len(ds.ids))]
    return table, info


def summary(table) -> dict:
    """Mean and minimum of every ``r*`` column per half."""
    out = {}
    for half, sub in table.groupby("half"):
        for col in [c for c in table.columns if c.startswith("r")]:
            out[f"{half}_{col}_mean"] = float(sub[col].mean())
            out[f"{half}_{col}_min"] = float(sub[col].min())
    return out
