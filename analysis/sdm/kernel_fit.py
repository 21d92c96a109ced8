"""Stretch field of the anisotropic kernel fitted on SDM-PSI's own study maps (Enge et al. 2021).

work in progress
"""

from __future__ import annotations

import numpy as np

from analysis.sdm.kernel import OFFSETS, TRUNCATE, fwhm_to_sigma
from analysis.sdm.space import MaskSpace


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


def mask_edges(space: MaskSpace):
    """All in-mask 26-neighbour edges once: ``(src, dst, offset number, length mm)``."""
    vox = np.abs(np.diag(space.affine)[:3])
    shape = np.array(space.shape)
    src_l, dst_l, n_l, len_l = [], [], [], []
    for n, off in enumerate(OFFSETS):
        nb = space.ijk + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        src = np.nonzero(ok)[0]
        dst = space._index[tuple(nb[ok].T)]
        keep = dst >= 0
        src_l.append(src[keep])
        dst_l.append(dst[keep])
        n_l.append(np.full(keep.sum(), n, dtype=np.int8))
        len_l.append(np.full(keep.sum(), float(np.linalg.norm(off * vox))))
    return (np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(n_l),
            np.concatenate(len_l))


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
