"""Permutation of subject images (PSI): family-wise error correction of SDM-PSI maps.

Albajes-Eizagirre, Solanes, Vieta & Radua (2019), NeuroImage 186:174-184, and its supplementary
R simulations. Per study ``i`` a *single* preliminary set of subject images ``Z_i`` (``n_i``
subjects x V voxels; spatially correlated; exactly zero mean and unit SD per voxel across the
subjects of each group) is created once. The subject images of imputation ``j`` are
``Z_i + g_ij / J_i`` (patients only, for a two-sample study). A permutation (a sign per subject
of a one-sample study, a reassignment of the subjects of a two-sample study to the two groups;
the same for all imputations; the first permutation is the identity) gives the study effect
``J_i x (mean difference)``, which is linear in the subject values::

    g_perm[i, j] = J_i (w_i . Z_i) + c_i g_ij

with ``w_i`` the permutation's contrast weights over the subjects (``+-1/n`` for a sign flip,
``1/n1`` or ``-1/n2`` for a group reassignment) and ``c_i = sum of w_i over the original
patients``. So one permutation costs one product ``W Z`` per study (shared by all imputations)
plus one random-effects meta-analysis per imputation (DerSimonian-Laird tau2 by default as
SDM-PSI, REML on request; the compiled fits of :mod:`analysis.sdm.statistics.re_kernels`, which the
estimator uses too), the exact Hedges-g variance ``v(g)`` at the permuted g, Rubin's rules over
imputations, SDM-Z, and TFCE (:mod:`analysis.sdm.inference.tfce`). The maxima
``max z+, max z-, max TFCE+, max TFCE-`` of every permutation give the voxel- and
TFCE-FWE corrected p maps.

Meta-regressions (hypothesis not on the intercept) permute *studies* instead, Freedman & Lane
(1983) as recommended by Winkler et al. (2014, NeuroImage 92:381-397): per imputation the
reduced model (the columns the hypothesis does not test) is fitted (same estimator), its
residuals are permuted across studies (one permutation shared by all imputations), added back to
the reduced fit, and the full model is refitted. The variance of a permuted effect is recomputed
at the study position it lands on (SDM-PSI's documentation does not say whether it does the
same; we assume so). That SDM-PSI permutes studies for a meta-regression is seen in the
permutation file of the public run of Enge et al. 2021 (NeuroImage 241:118436).

Choices SDM-PSI's public documentation leaves open, made here: the group analysis after
permutation is ``J x mean`` (the PSI paper's text) rather than the ``J x mean / sd`` of its
supplementary R code; the preliminary subject images are Gaussian-smoothed white noise (FWHM
``sdm.psi.subject_fwhm_mm``) instead of SDM's template-driven sequential imputation.

TFCE null (``tfce_subject_fwhm_mm``). The permuted maps are as smooth as the subject images
(6 mm, chosen so that the null max-z on Enge et al. 2021 matches SDM-PSI's), but maps recreated
from peaks (20 mm kernels) and imputed with 20 mm correlated noise are smoother at the scales
TFCE integrates over (Smith & Nichols 2009, NeuroImage 44:83-98: TFCE rewards extent). In
simulated null meta-analyses the observed z is rough at one voxel (lag-1 FWHM 8.1 +- 1.7 mm, the
voxel-wise maximum-likelihood mean) but its autocorrelation at 12 mm is 0.36-0.52 (two
simulations) against 0.30-0.33 for permuted maps from 12 mm images, 0.48-0.60 from 20 mm images
and 0.00-0.04 from 6 mm images. So the observed TFCE maxima are compared with a null that is
too low. In 100 whole-pipeline null meta-analyses (11 studies, 3 imputations, 50
permutations, 20 mm ROI; :mod:`analysis.bench.calibration`), where 7.8 % of false positives
(either direction) are expected:

==========================================  ======================  =====================
null maxima from                             voxel-FWE (95 % CI)     TFCE-FWE (95 % CI)
==========================================  ======================  =====================
6 mm images, shared (SDM-PSI; default)       15 % (8.6-23.5)         22 % (14.3-31.4)
14 mm images, shared                         17 % (10.2-25.8)        8 % (3.5-15.2)
20 mm images, shared                         23 % (15.2-32.5)        6 % (2.2-12.6)
6 mm; TFCE from separate 20 mm images        15 % (8.6-23.5)         6 % (2.2-12.6)
==========================================  ======================  =====================

Smoother images calibrate TFCE but make the max-z null too low, and they move our null max-z
on Enge away from SDM-PSI's (median 3.12 at 20 mm against SDM-PSI's 3.80). Hence the option:
a second set of subject images (``tfce_subject_fwhm_mm``, e.g. the kernel FWHM, 20 mm),
permuted with the same codes, gives the TFCE null maxima only, and everything else, the max-z
null included, stays bit for bit SDM-PSI's behaviour. On Enge it raises our null TFCE maxima
(5/50/95 %: 5117/7681/11752 at 20 mm, 4045/5888/8302 at 14 mm) above SDM-PSI's
(2470/4298/7232), which sit between our 6 mm (2575/3286/4766) and 10 mm (3358/4592/6736) shared
nulls: by these measures SDM-PSI's own TFCE-FWE is liberal on peak-based input too (Enge: 5
imputations, 100 permutations). The voxel-FWE excess is of another kind: each of the 15
voxel-FWE false positives is an observed maximum (|z| 4.1-5.6) above all, or all but one, of the
permuted maxima at every image smoothness tried (6-20 mm). In the one inspected, three studies
report same-sign peaks within 11 mm, MetaNSUE's maximum-likelihood mean there is 0.41 (tau2 0)
and draws the other eight studies' imputations towards it, which the permutation of
subject images does not reproduce.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from analysis.sdm.backend import array_module, check_backend, to_numpy
from analysis.sdm.inference import tfce as tfce_mod
from analysis.sdm.progress import progress as progress_bar
from analysis.sdm.rng import derive_rng
from analysis.sdm.statistics.hedges import (
    degrees_of_freedom,
    hedges_j,
    two_sample,
    variance_coefficients,
)
from analysis.sdm.statistics.hypothesis import contrast, hypothesis_row
from analysis.sdm.statistics.model import check_heterogeneity, fit_columns
from analysis.sdm.statistics.pooling import rubin_z
from analysis.sdm.statistics.re_kernels import (
    ROWS,
    blocked_layout,
    check_precision,
    compiled_design,
    permuted_mean,
    permuted_slope,
    run_kernel,
)
from analysis.sdm.statistics.wls import from_columns, to_columns

LGR = logging.getLogger(__name__)

MAXIMA_COLUMNS = ["permutation", "max_z", "max_neg_z", "max_tfce", "max_neg_tfce"]


#: SDM-PSI's number of permutations (including the identity)
N_PERMUTATIONS = 1000
#: smoothness (FWHM, mm) of the preliminary subject images: with it, the null max-z quantiles of
#: Enge et al. (2021) match SDM-PSI's (5/50/95 %: 3.42/3.81/4.39 vs 3.36/3.80/4.38)
SUBJECT_FWHM_MM = 6.0
#: smoothness (FWHM, mm) of a second set of subject images for the TFCE null only; ``None``
#: (SDM-PSI's behaviour): the TFCE null comes from the same permuted maps as the max-z null
TFCE_SUBJECT_FWHM_MM = None
#: REML in the permutation loop: at most this many Newton/Fisher updates, stopping earlier once
#: no tau2 moves by more than :data:`PSI_REML_TOL`
PSI_REML_ITERATIONS = 10
PSI_REML_TOL = 1e-7
#: permutations per parallel task, and voxels per block of the NumPy kernel (cache-sized)
CHUNK_SIZE = 10
VOXEL_BLOCK = 256


# ============================================================================================
# Inputs
# ============================================================================================
@dataclass
class PSIInputs:
    """What a permutation test needs.

    Parameters
    ----------
    imputations : ndarray, float32, shape (m, k, V)
        Imputed study Hedges g maps (MetaNSUE multiple imputation).
    n1, n2 : ndarray, shape (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    space : MaskSpace
        Voxel space of the maps.
    X : ndarray, shape (k, p), optional
        Design (default intercept only).
    C : ndarray, shape (p,), optional
        Hypothesis row (default: the first coefficient).
    studies : list of str, optional
        Study ids (for messages).
    heterogeneity : {"dl", "reml"}
        Between-study variance estimator of every fit (default DerSimonian-Laird, as SDM-PSI;
        the estimator's choice when built with :meth:`from_result`).
    """

    imputations: np.ndarray
    n1: np.ndarray
    n2: np.ndarray
    space: object
    X: np.ndarray | None = None
    C: np.ndarray | None = None
    studies: list = field(default_factory=list)
    heterogeneity: str = "dl"

    def __post_init__(self):
        self.heterogeneity = check_heterogeneity(self.heterogeneity)
        self.imputations = np.asarray(self.imputations, dtype=np.float32)
        if self.imputations.ndim != 3:
            raise ValueError(f"imputations must be (m, k, V), got shape {self.imputations.shape}")
        m, k, nv = self.imputations.shape
        self.n1 = np.asarray(self.n1, dtype=float).reshape(-1)
        self.n2 = (np.full(k, np.nan) if self.n2 is None
                   else np.asarray(self.n2, dtype=float).reshape(-1))
        if len(self.n1) != k or len(self.n2) != k:
            raise ValueError(f"n1/n2 have {len(self.n1)}/{len(self.n2)} entries for {k} studies")
        if nv != self.space.n_voxels:
            raise ValueError(f"maps have {nv} voxels but the space has {self.space.n_voxels}")
        self.X = np.ones((k, 1)) if self.X is None else np.asarray(self.X, dtype=float)
        if self.X.ndim == 1:
            self.X = self.X[:, None]
        if self.X.shape[0] != k:
            raise ValueError(f"design has {self.X.shape[0]} rows for {k} studies")
        self.C = hypothesis_row(self.C, self.X.shape[1])
        if not self.studies:
            self.studies = [f"study{i + 1}" for i in range(k)]
        two = self.two_sample
        bad = (self.n1 < 2) | (two & (self.n2 < 2))
        if bad.any():
            raise ValueError(f"studies need >= 2 subjects per group: {np.array(self.studies)[bad]}")

    @property
    def two_sample(self) -> np.ndarray:
        """Whether each study compares two groups (``n2`` given)."""
        return two_sample(self.n2)

    @property
    def intercept_only(self) -> bool:
        """Whether the design is the intercept alone (a mean model)."""
        return self.X.shape[1] == 1 and np.allclose(self.X, 1.0)

    @property
    def method(self) -> str:
        """``"subjects"`` (mean models: hypothesis on the intercept only) or
        ``"freedman-lane"`` (meta-regression).
        """
        nz = np.flatnonzero(self.C)
        is_intercept = np.allclose(self.X[:, 0], 1.0)
        return "subjects" if (is_intercept and list(nz) == [0]) else "freedman-lane"

    def variance_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``k1, k2`` with ``v(g) = k1 + k2 g^2`` (exact Hedges-g variance,
        :func:`analysis.sdm.statistics.hedges.variance_coefficients`).
        """
        return variance_coefficients(self.n1, self.n2)

    @property
    def j(self) -> np.ndarray:
        """Hedges' small-sample correction ``J`` of every study."""
        return hedges_j(degrees_of_freedom(self.n1, self.n2))

    @classmethod
    def from_result(cls, result) -> PSIInputs:
        """Inputs from the estimator's ``MetaResult`` (``imputations``, ``space``, sample
        sizes from ``bounds``/``n1``/``n2``, design ``X`` and hypothesis ``C`` when present).
        """
        if isinstance(result, cls):
            return result
        bounds = getattr(result, "bounds", None)
        n1 = getattr(result, "n1", None)
        n2 = getattr(result, "n2", None)
        if n1 is None and bounds is not None:
            n1, n2 = bounds.n1, bounds.n2
        studies = getattr(result, "studies", None) or getattr(bounds, "studies", None) or []
        if n1 is None or getattr(result, "imputations", None) is None:
            raise ValueError("the result has no imputations / sample sizes to permute")
        params = getattr(result, "params", None) or {}
        return cls(result.imputations, n1, n2, result.space, getattr(result, "X", None),
                   getattr(result, "C", None), list(studies),
                   params.get("heterogeneity", "dl"))


# ============================================================================================
# Preliminary subject images and permutation codes
# ============================================================================================
def _standardise(a: np.ndarray) -> np.ndarray:
    """Exactly zero mean and unit SD (ddof 1) per voxel across the rows."""
    a = a - a.mean(0, keepdims=True)
    sd = a.std(0, ddof=1, keepdims=True)
    return (a / sd).astype(np.float32)


def make_subject_images(n1, n2, space, rng: np.random.Generator,
                        fwhm_mm: float | None = None) -> list[np.ndarray]:
    """The single preliminary set of subject images of every study (Albajes-Eizagirre et al. 2019).

    Gaussian-smoothed white noise (:func:`analysis.sdm.statistics.metansue.imputation.correlated_fields`), then
    standardised per voxel across the subjects of each group (exact zero mean, unit SD, as the
    PSI supplement's ``z = (r - mean(r)) / sd(r)``). Rows ``0..n1-1`` are the patients (or the
    one sample), rows ``n1..n1+n2-1`` the controls.

    Returns
    -------
    list of ndarray (n_i, V), float32
    """
    from analysis.sdm.statistics.metansue.imputation import correlated_fields

    fwhm_mm = float(SUBJECT_FWHM_MM if fwhm_mm is None else fwhm_mm)
    n1 = np.asarray(n1, dtype=float).reshape(-1)
    n2 = np.asarray(n2, dtype=float).reshape(-1)
    out = []
    for a, b in zip(n1, n2, strict=True):
        groups = [int(a)] + ([int(b)] if np.isfinite(b) and b > 0 else [])
        parts = [_standardise(correlated_fields(rng, g, space, fwhm_mm)) for g in groups]
        out.append(np.concatenate(parts, axis=0))
    return out


@dataclass
class PermutationCodes:
    """All permutations of a test, generated up front (so chunking never changes them).

    ``weights[i]`` is (N, n_i) float32: the contrast weights of study ``i``'s subjects in each
    permutation; ``c`` (N, k) the coefficient of the imputed g. For Freedman-Lane, ``order`` is
    (N, k): the study permutation. Row 0 is the identity.
    """

    method: str
    n: int
    weights: list = field(default_factory=list)
    c: np.ndarray | None = None
    order: np.ndarray | None = None

    def chunk(self, start: int, stop: int) -> PermutationCodes:
        """The codes of permutations ``start`` to ``stop - 1``."""
        return PermutationCodes(
            self.method, stop - start,
            [w[start:stop] for w in self.weights],
            None if self.c is None else self.c[start:stop],
            None if self.order is None else self.order[start:stop],
        )


def make_codes(inputs: PSIInputs, n_permutations: int, rng: np.random.Generator
               ) -> PermutationCodes:
    """Permutation codes: sign flips / group reassignments per subject, or study orders.

    The first permutation is the identity (as in SDM-PSI's permutation files of Enge et al.
    2021). For a two-sample study with ``n1``
    patients the first ``n1`` entries of a random permutation of its subjects become the
    patients. Codes are drawn permutation by permutation, so the first ``N`` permutations are
    the same whatever the total number asked for.
    """
    n = int(n_permutations)
    if n < 1:
        raise ValueError("n_permutations must be >= 1")
    k = len(inputs.n1)
    if inputs.method == "freedman-lane":
        order = np.empty((n, k), dtype=np.int64)
        order[0] = np.arange(k)
        for b in range(1, n):
            order[b] = rng.permutation(k)
        return PermutationCodes("freedman-lane", n, order=order)
    sizes = [int(a) + (int(b2) if two else 0)
             for a, b2, two in zip(inputs.n1, np.nan_to_num(inputs.n2), inputs.two_sample,
                                   strict=True)]
    weights = [np.empty((n, t), dtype=np.float64) for t in sizes]
    c = np.empty((n, k), dtype=np.float64)
    for b in range(n):
        for i in range(k):
            a = int(inputs.n1[i])
            w = weights[i][b]
            if inputs.two_sample[i]:
                b2 = sizes[i] - a
                if b == 0:
                    w[:a], w[a:] = 1.0 / a, -1.0 / b2
                else:
                    perm = rng.permutation(sizes[i])
                    w[perm[:a]] = 1.0 / a
                    w[perm[a:]] = -1.0 / b2
            else:
                w[:] = (1.0 if b == 0 else rng.choice(np.array([-1.0, 1.0]), size=a)) / a
            c[b, i] = w[:a].sum()
    return PermutationCodes("subjects", n, weights=[w.astype(np.float32) for w in weights], c=c)


# ============================================================================================
# NumPy / CuPy fits (DerSimonian-Laird, or bounded REML updates from it), Rubin's rules
# ============================================================================================
def reml_fixed(y, v, X=None, n_iter: int = 10, xp=np, tol: float = 0.0):
    """Random-effects fit, vectorised over voxels (and imputations), on any array back-end.

    The statistics core's fit (:func:`analysis.sdm.statistics.model.fit_columns`) on arrays
    with leading axes. ``n_iter = 0``: DerSimonian-Laird (closed form). Otherwise REML from the
    DerSimonian-Laird value: Newton steps on the restricted log-likelihood, the Fisher-scoring
    step where it is not locally concave (:func:`analysis.sdm.statistics.tau2.reml`), at most
    ``n_iter`` updates per voxel.

    Parameters
    ----------
    y, v : array (..., k, N)
        Effects and sampling variances.
    X : ndarray (k, p), optional
        Design (intercept only when None).
    n_iter : int
        Maximum number of REML updates (0: DerSimonian-Laird).
    xp : module
        ``numpy`` or ``cupy``.
    tol : float
        A voxel stops once its tau2 moves by less than ``tol`` (0: always ``n_iter`` updates).

    Returns
    -------
    beta : array (..., N, p)
    cov : array (..., N, p, p)
    tau2 : array (..., N)
    """
    y2, shape = to_columns(y, xp)
    v2, _ = to_columns(v, xp)
    fit = fit_columns(y2, v2, X, method="reml" if n_iter else "dl", max_iter=n_iter, tol=tol,
                      xp=xp)
    return (from_columns(fit["beta"], shape), from_columns(fit["cov"], shape),
            from_columns(fit["tau2"], shape))


def _meta_numpy(y, k1, k2, X, C, n_iter, tol, xp, block):
    """Pooled (coef, var, z, tau2) for imputed effects y (m, k, V) on the array backend."""
    m, k, nv = y.shape
    k1d = xp.asarray(k1, dtype=xp.float64)[:, None]
    k2d = xp.asarray(k2, dtype=xp.float64)[:, None]
    Cd = xp.asarray(C, dtype=xp.float64)
    out = [xp.empty(nv, dtype=xp.float64) for _ in range(4)]
    for s in range(0, nv, block):
        yy = xp.asarray(y[:, :, s:s + block], dtype=xp.float64)
        vv = k1d + k2d * yy * yy
        beta, cov, t = reml_fixed(yy, vv, X, n_iter, xp, tol)
        coef, var = contrast(beta, cov, Cd, xp)
        cb, tot, z = rubin_z(coef, var, xp)
        for o, val in zip(out, (cb, tot, z, xp.sqrt(t).mean(0) ** 2), strict=True):
            o[s:s + block] = val
    return out


# ============================================================================================
# One permutation chunk
# ============================================================================================
@dataclass
class _Engine:
    """Everything a worker needs (arrays shared, never copied per permutation)."""

    inputs: PSIInputs
    subjects: list | None
    fl_fit: np.ndarray | None  # Freedman-Lane reduced fit (m, k, V)
    fl_res: np.ndarray | None  # and residuals
    n_iter: int
    tol: float
    backend: str
    block: int
    tfce: dict
    #: subject images of the TFCE null (None: the TFCE null uses ``subjects``)
    subjects_tfce: list | None = None
    #: arithmetic of the permuted fits of the voxel-blocked kernel ("single" or "double")
    precision: str = "single"
    #: use the voxel-blocked kernel where it applies (False: the estimator's voxel-major kernel
    #: for every permutation, the reference the blocked kernel is measured against)
    voxel_blocked: bool = True
    # derived once (not per permutation): the compiled design or None, v(g) = k1 + k2 g^2, and
    # for DerSimonian-Laird fits of a compiled design with the numba back-end the permuted data
    # in the voxel-blocked layout of :func:`analysis.sdm.statistics.re_kernels.blocked_layout`: the
    # imputations (subject permutations) or the reduced fit and its residuals (Freedman-Lane,
    # which then replace ``fl_fit`` and ``fl_res``)
    design: str | None = field(init=False)
    k1: np.ndarray = field(init=False)
    k2: np.ndarray = field(init=False)
    blocked: np.ndarray | None = field(init=False, default=None)
    blocked_fit: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self):
        inp = self.inputs
        self.design = compiled_design(inp.X, inp.C) if self.backend == "numba" else None
        self.k1, self.k2 = inp.variance_coefficients()
        if (not self.voxel_blocked or self.design not in ("mean", "slope")
                or self.n_iter != 0):
            return
        if self.subjects is not None:
            self.blocked = blocked_layout(inp.imputations)
        elif self.fl_fit is not None and self.design == "slope":
            self.blocked_fit = blocked_layout(self.fl_fit)
            self.blocked = blocked_layout(self.fl_res)
            self.fl_fit = self.fl_res = None

    def __sizeof__(self) -> int:
        """Bytes of the arrays held, not just of the object: joblib's Dask back-end then sends
        the engine to the cluster once (it scatters arguments above 1 kB by ``sizeof``) instead
        of inside every permutation chunk.
        """
        arrays = [self.inputs.imputations, self.fl_fit, self.fl_res, self.blocked,
                  self.blocked_fit, *(self.subjects or []), *(self.subjects_tfce or [])]
        return object.__sizeof__(self) + sum(int(getattr(a, "nbytes", 0)) for a in arrays)

    @property
    def width(self) -> int:
        """Columns of the study-effect array ``A`` (the voxels, padded to whole blocks when the
        voxel-blocked kernel is used).
        """
        if self.blocked is None:
            return self.inputs.space.n_voxels
        return self.blocked.shape[0] * self.blocked.shape[3]

    def study_effects(self, codes: PermutationCodes, b: int, tfce_null: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(A (k, V), c (k,)) of permutation ``b`` of a subject-level code (from the subject
        images of the TFCE null when ``tfce_null`` and they exist).
        """
        inp = self.inputs
        subjects = (self.subjects_tfce if tfce_null and self.subjects_tfce is not None
                    else self.subjects)
        k = len(inp.n1)
        nv = inp.space.n_voxels
        A = np.empty((k, self.width), dtype=np.float32)
        A[:, nv:] = 0.0  # the padding of the last voxel block
        jj = inp.j
        for i in range(k):
            A[i, :nv] = jj[i] * (codes.weights[i][b] @ subjects[i])
        return A, codes.c[b]

    def permuted_z(self, codes: PermutationCodes, b: int, tfce_null: bool = False
                   ) -> np.ndarray:
        """The pooled z map of permutation ``b`` (the voxel-blocked kernel where it applies,
        else :meth:`pooled`).
        """
        if self.blocked is None:
            return self.pooled(codes, b, tfce_null)["z"]
        inp = self.inputs
        nv = inp.space.n_voxels
        if codes.method != "subjects":
            out = permuted_slope(self.blocked_fit, self.blocked, inp.X, inp.C, self.k1, self.k2,
                                 nv, order=codes.order[b], mode=1, precision=self.precision)
        else:
            A, c = self.study_effects(codes, b, tfce_null)
            if self.design == "mean":
                out = permuted_mean(A, c, self.blocked, self.k1, self.k2, nv, self.precision)
            else:
                out = permuted_slope(A, self.blocked, inp.X, inp.C, self.k1, self.k2, nv, c=c,
                                     mode=0, precision=self.precision)
        return out[0] / np.sqrt(out[1])

    def pooled(self, codes: PermutationCodes | None, b: int = 0, tfce_null: bool = False
               ) -> dict:
        """Pooled coefficient, variance, z and tau2 maps of permutation ``b`` of ``codes``.

        ``codes=None`` is the identity: the imputations themselves, fitted with the estimator's
        kernel (:func:`analysis.sdm.statistics.re_kernels.run_kernel` with ``A = 0, c = 1``), so its z map
        is the estimator's. ``tfce_null`` permutes the subject images of the TFCE null.
        """
        inp = self.inputs
        design = self.design
        if codes is None:
            if design is not None:
                return self._compiled(None, inp.imputations, None, None, 0)
            y = inp.imputations
        elif codes.method == "subjects":
            A, c = self.study_effects(codes, b, tfce_null)
            if design is not None:
                return self._compiled(A[None], inp.imputations, c, None, 0)
            y = _LazyY(A, c, inp.imputations)
        else:
            if design is not None:
                return self._compiled(self.fl_fit, self.fl_res, None, codes.order[b], 1)
            y = _LazyFL(self.fl_fit, self.fl_res, codes.order[b])
        xp = array_module("cupy" if self.backend == "cupy" else "numpy")
        X = None if inp.intercept_only else inp.X
        coef, var, z, tau2 = _meta_numpy(y, self.k1, self.k2, X, inp.C, self.n_iter, self.tol,
                                         xp, self.block)
        return {"coef": to_numpy(coef), "var": to_numpy(var), "z": to_numpy(z),
                "tau2": to_numpy(tau2)}

    def _compiled(self, P1, P2, c, order, mode) -> dict:
        inp = self.inputs
        out = run_kernel(self.design, P2, self.k1, self.k2, inp.X, inp.C, n_iter=self.n_iter,
                         tol=self.tol, stats=False, A=P1, c=c, order=order, mode=mode)
        coef, var, tau2 = (out[ROWS.index(r)] for r in ("coef", "var", "tau2"))
        return {"coef": coef, "var": var, "z": coef / np.sqrt(var), "tau2": tau2}

    def maxima(self, z: np.ndarray) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
        pos, neg = tfce_mod.tfce(z, self.inputs.space, **self.tfce)
        return float(z.max()), float((-z).max()), float(pos.max()), float(neg.max()), pos, neg


class _LazyY:
    """``y[:, :, s:e] = A[:, s:e] + c[:, None] * G[:, :, s:e]`` built block by block."""

    def __init__(self, A, c, G):
        self.A, self.c, self.G = A, np.asarray(c, dtype=np.float64), G
        self.shape = G.shape

    def __getitem__(self, key):
        _, _, sl = key
        return self.A[None, :, sl] + self.c[None, :, None] * self.G[:, :, sl]


class _LazyFL:
    """Freedman-Lane permuted effects ``fit + residual[order]`` built block by block."""

    def __init__(self, fit, res, order):
        self.fit, self.res, self.order = fit, res, np.asarray(order)
        self.shape = fit.shape

    def __getitem__(self, key):
        _, _, sl = key
        return self.fit[:, :, sl] + self.res[:, self.order, sl]


def _run_chunk(engine: _Engine, codes: PermutationCodes) -> np.ndarray:
    out = np.empty((codes.n, 4))
    separate = engine.subjects_tfce is not None and codes.method == "subjects"
    for b in range(codes.n):
        z = engine.permuted_z(codes, b)
        if not separate:
            out[b] = engine.maxima(z)[:4]
            continue
        # TFCE null from the smoother subject images, same permutation (same signs/groups)
        zt = engine.permuted_z(codes, b, tfce_null=True)
        pos, neg = tfce_mod.tfce(zt, engine.inputs.space, **engine.tfce)
        out[b] = float(z.max()), float((-z).max()), float(pos.max()), float(neg.max())
    return out


# ============================================================================================
# Public API
# ============================================================================================
@dataclass
class PermutationResult:
    """Outcome of a PSI permutation test.

    Attributes
    ----------
    maxima : DataFrame
        One row per permutation (row 0 = identity): :data:`MAXIMA_COLUMNS`.
    maps : dict of str -> ndarray (V,)
        ``z``, ``g`` (pooled coefficient), ``var``, ``tau2``, ``tfce``, ``tfce_neg`` of the
        unpermuted data (as computed by the permutation kernel), ``corrp_voxel``,
        ``corrp_voxel_neg``, ``corrp_tfce``, ``corrp_tfce_neg`` (``1 - p_FWE``, each
        direction corrected separately; SDM-PSI itself stores the negative direction as
        ``-(1 - p)``) and ``p_voxel``, ``p_voxel_neg``, ``p_tfce``, ``p_tfce_neg`` (the p values).
    space : MaskSpace
    method : str
        ``"subjects"`` or ``"freedman-lane"``.
    info : dict
        Settings and timing.
    """

    maxima: pd.DataFrame
    maps: dict
    space: object
    method: str
    info: dict

    def get_map(self, name: str):
        """A map as a NIfTI image."""
        return self.space.to_img(self.maps[name])

    def save(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """Write the corrected-p maps (``<prefix>corrp_*.nii.gz``) and ``fwe/maxima.tsv``."""
        from analysis.sdm.inputs.io import save_nifti, write_tsv

        out_dir = Path(out_dir)
        written = []
        for name in ("corrp_voxel", "corrp_voxel_neg", "corrp_tfce", "corrp_tfce_neg"):
            written.append(save_nifti(out_dir / f"{prefix}{name}.nii.gz", self.get_map(name)))
        written.append(write_tsv(out_dir / "fwe" / f"{prefix}maxima.tsv", self.maxima,
                                 float_format="%.6f"))
        return written


def _freedman_lane_parts(inputs: PSIInputs, n_iter: int, tol: float, block: int):
    """Reduced-model fit and residuals per imputation (float32, (m, k, V))."""
    k1, k2 = inputs.variance_coefficients()
    red = np.flatnonzero(inputs.C == 0)
    Xr = inputs.X[:, red]
    G = inputs.imputations
    fit = np.empty_like(G)
    for s in range(0, G.shape[2], block):
        y = G[:, :, s:s + block].astype(np.float64)
        if Xr.shape[1] == 0:
            fit[:, :, s:s + block] = 0.0
            continue
        beta, _, _ = reml_fixed(y, k1[:, None] + k2[:, None] * y * y, Xr, n_iter, np, tol)
        fit[:, :, s:s + block] = np.einsum("kp,mnp->mkn", Xr, beta)
    return fit, G - fit


def psi_permutation_test(result_or_inputs, n_permutations: int = N_PERMUTATIONS,
                         seed: int = 0, n_jobs: int = 1, backend: str = "numpy", *,
                         chunk_size: int = CHUNK_SIZE,
                         reml_iterations: int = PSI_REML_ITERATIONS,
                         reml_tol: float = PSI_REML_TOL, voxel_block: int = VOXEL_BLOCK,
                         subject_fwhm_mm: float = SUBJECT_FWHM_MM, subject_images=None,
                         tfce_subject_fwhm_mm: float | None = TFCE_SUBJECT_FWHM_MM,
                         tfce_subject_images=None, heterogeneity: str | None = None,
                         tfce_params: dict | None = None, precision: str = "single",
                         progress: bool = False) -> PermutationResult:
    """Family-wise error correction by permutation of subject images (SDM-PSI).

    Parameters
    ----------
    result_or_inputs : PSIInputs or MetaResult
        Imputed study maps, sample sizes, design and hypothesis.
    n_permutations : int
        Number of permutations including the identity (SDM-PSI's 1000).
    seed : int
        Seed of the subject images and the permutation codes: streams ``psi/subject_images``
        and ``psi/permutations`` (:func:`analysis.sdm.rng.derive_rng`).
    n_jobs : int
        Parallel workers over permutation chunks (joblib; threads unless a
        :func:`joblib.parallel_config` context, e.g. ``backend="dask"``, says otherwise).
    backend : {"numpy", "numba", "cupy"}
        Array back-end of the meta-analysis kernel (:mod:`analysis.sdm.backend`).
    chunk_size : int
        Permutations per task.
    reml_iterations, reml_tol : int, float
        Maximum Newton/Fisher updates per REML fit, stopping earlier when tau2 moves less than
        ``reml_tol``; unused with DerSimonian-Laird.
    voxel_block : int
        Voxels per block of the NumPy kernel.
    subject_fwhm_mm : float
        Smoothness of the preliminary subject images (:data:`SUBJECT_FWHM_MM`).
    subject_images : list of ndarray, optional
        Pre-made subject images (else :func:`make_subject_images`).
    tfce_subject_fwhm_mm : float, optional
        Smoothness of a second set of subject images whose permutations give the TFCE null
        maxima only (stream ``psi/subject_images_tfce``; same permutation codes); the max-z
        null keeps ``subject_fwhm_mm``. ``None`` (default, SDM-PSI's behaviour): both maxima
        come from the same permuted maps. Maps recreated from peaks are smoother than the
        6 mm null maps, and TFCE rewards extent, so SDM-PSI's behaviour makes TFCE-FWE
        anti-conservative on peak-based input (22 % false positives for 7.8 % expected); the
        kernel FWHM (20 mm, also the smoothness of the imputation noise) calibrates it (6 %),
        at the price of TFCE thresholds above SDM-PSI's (module notes). Costs one more
        meta-analysis per permutation (permutations about 1.6 times slower, measured) and a
        second set of subject images in memory. Unused by Freedman-Lane, which permutes the
        study maps themselves.
    tfce_subject_images : list of ndarray, optional
        Pre-made subject images of the TFCE null (implies a separate TFCE null).
    heterogeneity : {"dl", "reml"}, optional
        Between-study variance estimator of every fit (default: the inputs', i.e. the
        estimator's; DerSimonian-Laird as SDM-PSI).
    tfce_params : dict, optional
        ``E``, ``H``, ``n_steps``, ``connectivity`` of :func:`analysis.sdm.inference.tfce.tfce` (default
        SDM-PSI's 0.5, 2, 100, 6).
    precision : {"single", "double"}
        Arithmetic of the per-study terms of the permuted fits where the voxel-blocked kernel
        applies (numba back-end, DerSimonian-Laird fits of the designs ``[1]`` and ``[1, x]``:
        :func:`analysis.sdm.statistics.re_kernels.permuted_mean` and
        :func:`analysis.sdm.statistics.re_kernels.permuted_slope`); tau2 and Rubin's rules are always
        double. ``"single"`` halves the kernel time; the permuted z maps differ from
        ``"double"`` by less than 1e-6. The observed (identity) maps are always the
        estimator's, in double precision.
    progress : bool
        Show a progress bar.

    Returns
    -------
    PermutationResult
        Results are identical for any ``n_jobs``, ``chunk_size`` and joblib back-end.
    """
    n_permutations = int(n_permutations)
    seed = int(seed)
    inputs = PSIInputs.from_result(result_or_inputs)
    heterogeneity = check_heterogeneity(heterogeneity or inputs.heterogeneity)
    n_iter = 0 if heterogeneity == "dl" else int(reml_iterations)
    chunk_size = int(chunk_size)
    block = int(voxel_block)
    tol = float(reml_tol)
    check_backend(backend)
    precision = check_precision(precision)
    if tfce_subject_fwhm_mm is not None:
        tfce_subject_fwhm_mm = float(tfce_subject_fwhm_mm)
        if not tfce_subject_fwhm_mm > 0:
            raise ValueError(f"tfce_subject_fwhm_mm must be > 0 or None, got "
                             f"{tfce_subject_fwhm_mm}")
    t0 = time.perf_counter()
    codes = make_codes(inputs, n_permutations, derive_rng(seed, "psi/permutations"))
    subjects, subjects_tfce, fl_fit, fl_res = None, None, None, None
    if codes.method == "subjects":
        subjects = subject_images if subject_images is not None else make_subject_images(
            inputs.n1, inputs.n2, inputs.space, derive_rng(seed, "psi/subject_images"),
            subject_fwhm_mm)
        if tfce_subject_images is not None:
            subjects_tfce = tfce_subject_images
        elif tfce_subject_fwhm_mm is not None:
            subjects_tfce = make_subject_images(inputs.n1, inputs.n2, inputs.space,
                                                derive_rng(seed, "psi/subject_images_tfce"),
                                                tfce_subject_fwhm_mm)
    else:
        fl_fit, fl_res = _freedman_lane_parts(inputs, n_iter, tol, block)
    engine = _Engine(inputs, subjects, fl_fit, fl_res, n_iter, tol, backend, block,
                     tfce_mod.tfce_params(**(tfce_params or {})), subjects_tfce, precision)
    fl_fit = fl_res = None  # the engine holds what it needs (blocked copies where it uses them)
    t_setup = time.perf_counter() - t0
    # identity permutation: the observed maps
    obs = engine.pooled(None)
    zmax, zmin, tmax, tmin, tpos, tneg = engine.maxima(obs["z"])
    rows = [np.array([[zmax, zmin, tmax, tmin]])]
    bounds = list(range(1, n_permutations, chunk_size))
    chunks = [codes.chunk(s, min(s + chunk_size, n_permutations)) for s in bounds]
    t1 = time.perf_counter()
    if chunks:
        # The per-study products w.Z are tiny BLAS calls made from several worker threads at
        # once: a multi-threaded BLAS then oversubscribes the cores (measured 70x slower on a
        # busy 2-core machine). Parallelism comes from the permutation chunks instead.
        with threadpool_limits(limits=1, user_api="blas"):
            par = Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")
            gen = par(delayed(_run_chunk)(engine, ch) for ch in chunks)
            with progress_bar(total=n_permutations - 1, desc="PSI permutations", logger=LGR,
                              disable=not progress, unit="permutation") as bar:
                for r in gen:
                    rows.append(r)
                    bar.update(len(r))
    t_perm = time.perf_counter() - t1
    maxima = np.concatenate(rows, axis=0)
    table = pd.DataFrame(maxima, columns=MAXIMA_COLUMNS[1:])
    table.insert(0, "permutation", np.arange(1, n_permutations + 1))
    z = obs["z"]
    pv = tfce_mod.fwe_corrected_p(z, maxima[:, 0])
    pvn = tfce_mod.fwe_corrected_p(-z, maxima[:, 1])
    pt = tfce_mod.fwe_corrected_p(tpos, maxima[:, 2])
    ptn = tfce_mod.fwe_corrected_p(tneg, maxima[:, 3])
    maps = {"z": z, "g": obs["coef"], "var": obs["var"], "tau2": obs["tau2"], "tfce": tpos,
            "tfce_neg": tneg, "p_voxel": pv, "p_voxel_neg": pvn, "p_tfce": pt, "p_tfce_neg": ptn,
            "corrp_voxel": 1 - pv, "corrp_voxel_neg": 1 - pvn, "corrp_tfce": 1 - pt,
            "corrp_tfce_neg": 1 - ptn}
    info = {"n_permutations": n_permutations, "seed": seed, "backend": backend,
            "n_jobs": n_jobs, "chunk_size": chunk_size, "heterogeneity": heterogeneity,
            "kernel": "voxel-blocked" if engine.blocked is not None else "voxel-major",
            "precision": precision if engine.blocked is not None else "double",
            "reml_iterations": n_iter,
            "imputations": int(inputs.imputations.shape[0]), "studies": len(inputs.n1),
            "voxels": int(inputs.space.n_voxels), "method": codes.method,
            "subject_fwhm_mm": float(subject_fwhm_mm),
            "tfce_null": "shared" if subjects_tfce is None else "separate",
            "tfce_subject_fwhm_mm": None if subjects_tfce is None else tfce_subject_fwhm_mm,
            "seconds_setup": round(t_setup, 3), "seconds_permutations": round(t_perm, 3)}
    LGR.info("PSI: %d permutations (%s, %s) in %.1f s", n_permutations, codes.method, backend,
             t_perm)
    return PermutationResult(table, maps, inputs.space, codes.method, info)
