"""MetaNSUE's imputation of study images: spatially correlated noise fields and inverse-CDF
draws from the truncated normal of each censored voxel.

See :mod:`analysis.sdm.statistics.metansue` for the model and its sources (Albajes-Eizagirre
et al. 2019). NumPy code uses :func:`scipy.special.ndtri`; the compiled draw
(:func:`_impute_study`) has its own inverse normal CDF, :func:`_ndtri`.
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np
from scipy import ndimage
from scipy.special import ndtr, ndtri

from analysis.sdm.progress import progress as progress_bar
from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.metansue.settings import KNOWN_TOL

LGR = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- noise fields
def _axis_operators(n_fine: int, lo: int, hi: int, sigma_vox: float, factor: int):
    """1-D operators of one axis for the fine voxels ``lo..hi-1``.

    Returns ``S`` (support nodes x noise nodes): Gaussian smoothing on the coarse lattice
    (spacing ``factor`` fine voxels, zero outside the grid), ``i0``/``frac``: the linear
    interpolation of every fine voxel from support nodes ``i0`` and ``i0 + 1`` (relative
    indices), and ``sd``: the exact standard deviation of the resulting 1-D operator rows.
    """
    n_coarse = (n_fine - 1) // factor + 2
    S = ndimage.gaussian_filter1d(np.eye(n_coarse), sigma_vox / factor, axis=0, mode="constant",
                                  truncate=4.0)
    pos = np.arange(lo, hi) / factor
    i0 = np.floor(pos).astype(int)
    frac = pos - i0
    i1 = np.minimum(i0 + 1, n_coarse - 1)
    s0, s1 = i0.min(), i1.max()
    S = S[s0:s1 + 1]
    used = np.flatnonzero(np.abs(S).max(0) > 0)
    S = S[:, used[0]:used[-1] + 1]
    rows = (1.0 - frac)[:, None] * S[i0 - s0] + frac[:, None] * S[i1 - s0]
    return S, i0 - s0, frac, np.sqrt((rows * rows).sum(1))


@numba.njit(parallel=True, cache=True, nogil=True)
def _trilinear(vol, ix, iy, iz, fx, fy, fz, scale, out):  # pragma: no cover - compiled
    """out[b, v] = scale[v] * trilinear interpolation of vol[b] at (ix + fx, iy + fy, iz + fz)."""
    nb = vol.shape[0]
    nv = ix.shape[0]
    for v in numba.prange(nv):
        x, y, z = ix[v], iy[v], iz[v]
        a, bb, c = fx[v], fy[v], fz[v]
        x1 = x + 1 if a > 0 else x
        y1 = y + 1 if bb > 0 else y
        z1 = z + 1 if c > 0 else z
        for b in range(nb):
            c00 = vol[b, x, y, z] * (1 - c) + vol[b, x, y, z1] * c
            c01 = vol[b, x, y1, z] * (1 - c) + vol[b, x, y1, z1] * c
            c10 = vol[b, x1, y, z] * (1 - c) + vol[b, x1, y, z1] * c
            c11 = vol[b, x1, y1, z] * (1 - c) + vol[b, x1, y1, z1] * c
            c0 = c00 * (1 - bb) + c01 * bb
            c1 = c10 * (1 - bb) + c11 * bb
            out[b, v] = (c0 * (1 - a) + c1 * a) * scale[v]


def correlated_fields(rng: np.random.Generator, n: int, space, fwhm_mm: float,
                      factor: int = 2, batch: int = 25) -> np.ndarray:
    """``n`` spatially correlated standard-normal fields over the voxels of ``space``.

    White noise on a lattice ``factor`` times coarser than the grid is smoothed with a
    Gaussian of the given FWHM (separable, zero padding), interpolated trilinearly to the
    voxels and divided voxel-wise by its exact standard deviation (smoothing and interpolation
    are separable, so the variance is a product of three 1-D quadratic forms). Every voxel is
    exactly N(0, 1); neighbouring voxels correlate as after smoothing white noise with the
    kernel.

    Returns
    -------
    ndarray, float32, shape (n, V)
    """
    vox = float(abs(space.affine[0, 0]))
    sigma_vox = fwhm_mm / math.sqrt(8.0 * math.log(2.0)) / vox
    ijk = space.ijk
    lo, hi = ijk.min(0), ijk.max(0) + 1
    ops = [_axis_operators(space.shape[ax], lo[ax], hi[ax], sigma_vox, factor)
           for ax in range(3)]
    rel = ijk - lo
    idx = [ops[ax][1][rel[:, ax]].astype(np.int64) for ax in range(3)]
    frac = [ops[ax][2][rel[:, ax]] for ax in range(3)]
    sd = ops[0][3][rel[:, 0]] * ops[1][3][rel[:, 1]] * ops[2][3][rel[:, 2]]
    inv_sd = 1.0 / sd
    mats = [op[0].astype(np.float32) for op in ops]
    nshape = tuple(m.shape[1] for m in mats)
    out = np.empty((n, len(ijk)), dtype=np.float32)
    for s in range(0, n, batch):
        b = min(batch, n - s)
        w = rng.standard_normal((b, *nshape), dtype=np.float32)
        w = w @ mats[2].T
        w = np.matmul(mats[1][None, None], w)
        w = np.einsum("Xx,bxyz->bXyz", mats[0], w, optimize=True)
        _trilinear(np.ascontiguousarray(w), *idx, *frac, inv_sd, out[s:s + b])
    return out


class NoiseFields:
    """The correlated noise fields of one imputation stream, study position by study position,
    drawn once and kept.

    :func:`impute` draws ``imputations`` fields (:func:`correlated_fields`) for each study in
    turn from one stream, so the fields of the ``i``-th study of a fit depend only on the
    stream's seed, ``i``, the number of imputations, the space and the FWHM, not on the studies'
    data. Fits that share all of these (the re-fits of a result on subsets of its studies: the
    jackknife, meta-regressions that drop a study, subgroups) therefore draw the same fields at
    the same positions; passing one ``NoiseFields`` to all of them draws each position's fields
    once, and every imputed value is the one the fit would draw on its own. Holds
    ``imputations x V`` float32 values per position drawn.

    Parameters
    ----------
    rng : numpy.random.Generator
        The stream, before any draw (``derive_rng(seed, "sdm/impute")`` in the estimator).
    imputations : int
    space : MaskSpace
    fwhm_mm : float
    key : tuple, optional
        What the stream was derived from (the estimator's seed, imputations and FWHM), compared
        by the fits that are given these fields.
    """

    def __init__(self, rng: np.random.Generator, imputations: int, space, fwhm_mm: float,
                 key: tuple = ()):
        self.rng = rng
        self.imputations = int(imputations)
        self.space = space
        self.fwhm_mm = float(fwhm_mm)
        self.key = tuple(key)
        self._fields: list[np.ndarray] = []

    def __getitem__(self, position: int) -> np.ndarray:
        """The ``(imputations, V)`` fields of study position ``position`` (drawn on first use,
        with every position before it).
        """
        while len(self._fields) <= position:
            self._fields.append(correlated_fields(self.rng, self.imputations, self.space,
                                                  self.fwhm_mm))
        return self._fields[position]

    @property
    def drawn(self) -> int:
        """Positions drawn so far."""
        return len(self._fields)

    def matches(self, key: tuple, imputations: int, space) -> bool:
        """Whether a fit with ``key``, ``imputations`` and ``space`` draws these fields."""
        if tuple(key) != self.key or int(imputations) != self.imputations:
            return False
        return space is self.space or (space.shape == self.space.shape
                                       and np.array_equal(space.affine, self.space.affine)
                                       and np.array_equal(space.ijk, self.space.ijk))


# ----------------------------------------------------------------------------- imputation
def truncnorm_ppf(u, mean, sd, lo, up) -> np.ndarray:
    """Inverse CDF of N(mean, sd^2) truncated to [lo, up] at probability ``u`` (stable)."""
    a = (lo - mean) / sd
    b = (up - mean) / sd
    flip = a > 0
    aa = np.where(flip, -b, a)
    bb = np.where(flip, -a, b)
    uu = np.where(flip, 1.0 - u, u)
    pa, pb = ndtr(aa), ndtr(bb)
    x = ndtri(np.clip(pa + uu * (pb - pa), 1e-300, 1.0 - 1e-16))
    x = np.where(flip, -x, x)
    return np.clip(mean + sd * x, lo, up)



@numba.njit(cache=True, nogil=True)
def _ndtri(p):  # pragma: no cover - compiled
    """Inverse standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9;
    ample for effect sizes stored as float32).
    """
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    a1, a2, a3 = -3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02
    a4, a5, a6 = 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00
    b1, b2, b3 = -5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02
    b4, b5 = 6.680131188771972e01, -1.328068155288572e01
    c1, c2, c3 = -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00
    c4, c5, c6 = -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00
    d1, d2, d3, d4 = 7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, \
        3.754408661907416e00
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((c1 * q + c2) * q + c3) * q + c4) * q + c5) * q + c6) / \
            ((((d1 * q + d2) * q + d3) * q + d4) * q + 1.0)
    elif p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        x = -(((((c1 * q + c2) * q + c3) * q + c4) * q + c5) * q + c6) / \
            ((((d1 * q + d2) * q + d3) * q + d4) * q + 1.0)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a1 * r + a2) * r + a3) * r + a4) * r + a5) * r + a6) * q / \
            (((((b1 * r + b2) * r + b3) * r + b4) * r + b5) * r + 1.0)
    return x


@numba.njit(parallel=True, cache=True, nogil=True)
def _impute_study(fields, mu, sd, lo, up, known, out):  # pragma: no cover - compiled
    """Inverse-CDF draws of one study: out[j, v] from N(mu, sd) truncated to [lo, up]."""
    m, nv = fields.shape
    for v in numba.prange(nv):
        if known[v]:
            for j in range(m):
                out[j, v] = lo[v]
            continue
        a = (lo[v] - mu[v]) / sd[v]
        b = (up[v] - mu[v]) / sd[v]
        flip = a > 0.0
        if flip:
            a, b = -b, -a
        pa = 0.5 * math.erfc(-a / 1.4142135623730951)
        pb = 0.5 * math.erfc(-b / 1.4142135623730951)
        for j in range(m):
            u = 0.5 * math.erfc(-fields[j, v] / 1.4142135623730951)
            if flip:
                u = 1.0 - u
            p = pa + u * (pb - pa)
            p = min(max(p, 1e-300), 1.0 - 1e-16)
            x = _ndtri(p)
            if flip:
                x = -x
            val = mu[v] + sd[v] * x
            out[j, v] = min(max(val, lo[v]), up[v])


def impute(lower, upper, mle: dict, n1, n2, space, *, imputations: int, rng,
           fwhm_mm: float, progress: bool = False, noise: NoiseFields | None = None
           ) -> np.ndarray:
    """Draw ``imputations`` study images per study (simple re-implementation of SDM-PSI's step).

    Parameters
    ----------
    lower, upper : ndarray, shape (k, V)
        Bound maps.
    mle : dict
        Output of :func:`censored_mle` (``beta``, ``tau2``, ``X``).
    n1, n2 : array-like, shape (k,)
        Sample sizes.
    space : MaskSpace
        Voxel space of the maps (for the spatially correlated noise).
    imputations : int
        Number of imputed images per study (SDM-PSI default 50).
    rng : numpy.random.Generator
        Seeded generator (one stream; the draws depend only on it).
    fwhm_mm : float
        FWHM of the smoothing that correlates the noise (the kernel FWHM).
    progress : bool
        Report the studies done.
    noise : NoiseFields, optional
        The fields of ``rng``'s stream, shared with other fits (``rng`` is then not drawn
        from); the imputed values are the same either way.

    Returns
    -------
    ndarray, float32, shape (imputations, k, V)
        Imputed Hedges g; known voxels equal ``lower``.
    """
    lower = np.asarray(lower, dtype=np.float32)
    upper = np.asarray(upper, dtype=np.float32)
    k, nv = lower.shape
    k1, k2 = variance_coefficients(n1, n2)
    mu = (mle["X"] @ mle["beta"].T).astype(np.float32)  # (k, V)
    tau2 = np.asarray(mle["tau2"], dtype=float)
    out = np.empty((imputations, k, nv), dtype=np.float32)
    for i in progress_bar(range(k), desc="imputing study images", unit="study",
                          disable=not progress, logger=LGR):
        known = np.abs(upper[i] - lower[i]) < KNOWN_TOL
        fields = (correlated_fields(rng, imputations, space, fwhm_mm) if noise is None
                  else noise[i])
        mui = mu[i].astype(float)
        sd = np.sqrt(k1[i] + k2[i] * mui ** 2 + tau2)
        res = np.empty((imputations, nv), dtype=np.float32)
        _impute_study(fields, mui, sd, lower[i].astype(float), upper[i].astype(float), known,
                      res)
        out[:, i, :] = res
    return out
