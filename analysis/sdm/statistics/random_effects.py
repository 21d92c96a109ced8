"""Random-effects meta-analysis and meta-regression, vectorised over voxels.

Every function works on arrays whose study axis is the second-to-last one and whose voxel axis
is the last one: ``(k, V)`` or ``(m, k, V)`` (``m`` imputations). The design ``X`` (``k x p``) and
the hypothesis row ``C`` (``p``) are shared by all voxels.

The model is the standard random-effects model, computed by the statistics core
(:func:`analysis.sdm.statistics.model.fit_columns`). Its between-study variance is
DerSimonian-Laird in its meta-regression form (``method="dl"``, SDM-PSI's default; it reproduces
SDM-PSI's own per-imputation output, Li et al. 2023) or REML (``method="reml"``, SDM-PSI's
``AccurateHeterogeneity``; the ``metansue`` R package, Radua et al., ``.tau2.reml``)::

    DL:   tau2 = max(0, (Q - df) / tr P_fe)
    REML: W = diag(1/(v + tau2));  P = W - W X (X'WX)^-1 X'W
          tau2 <- max(0, tau2 + (y'PPy - tr P) / (2 y'PPPy - tr PP))
          (Newton; Fisher scoring, denominator tr PP, where not locally concave)
    beta = (X'WX)^-1 X'Wy;   Cov = (X'WX)^-1
    Q = y' P_fe y  (fixed-effect weights 1/v);  df = k - p
    H2 = 1 + tau2 tr(P_fe) / df;  I2 = 1 - 1/H2

The compiled fits of the estimator and the permutation test (:mod:`analysis.sdm.statistics.re_kernels`) are
tested against the core.

References
----------
DerSimonian R, Laird N (1986). Meta-analysis in clinical trials. Control Clin Trials 7:177-188.
Viechtbauer W (2005). Bias and efficiency of meta-analytic variance estimators in the
random-effects model. J Educ Behav Stat 30:261-293.
Albajes-Eizagirre A et al. (2019). Voxel-based meta-analysis via permutation of subject images
(PSI). NeuroImage 186:174-184.
"""

from __future__ import annotations

import numpy as np

from analysis.sdm.statistics.hypothesis import contrast, hypothesis_row
from analysis.sdm.statistics.model import fit_columns
from analysis.sdm.statistics.tau2 import REML_MAX_ITER, REML_TOL, reml
from analysis.sdm.statistics.wls import from_columns, to_columns


def _defaults() -> tuple[int, float]:
    """:data:`REML_MAX_ITER` and :data:`REML_TOL`."""
    return REML_MAX_ITER, REML_TOL


def _design(X, k: int) -> np.ndarray:
    if X is None:
        return np.ones((k, 1))
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    if X.shape[0] != k:
        raise ValueError(f"design has {X.shape[0]} rows but there are {k} studies")
    return X


def _moment_start(y2, v2, tau2, shape):
    """REML start: ``tau2`` broadcast to the voxels, else ``max(0, var(y) - mean(v))``
    (``metansue``'s start).
    """
    if tau2 is not None:
        return np.broadcast_to(np.asarray(tau2, dtype=float), shape).reshape(-1).copy()
    if y2.shape[0] < 2:
        return np.zeros(y2.shape[1])
    return np.maximum(0.0, y2.var(0, ddof=1) - v2.mean(0))


def reml_tau2(y, v, X=None, max_iter: int | None = None, tol: float | None = None, tau2=None):
    """REML estimate of the between-study variance at every voxel.

    Newton steps on the restricted log-likelihood, Fisher scoring where it is not locally
    concave (:func:`analysis.sdm.statistics.tau2.reml`).

    Parameters
    ----------
    y, v : ndarray, shape (..., k, V)
        Effect sizes and their sampling variances.
    X : ndarray, shape (k, p), optional
        Design shared by all voxels (default: intercept only).
    max_iter, tol : optional
        Iteration limit and absolute tolerance on tau2 (default :data:`REML_MAX_ITER`,
        :data:`REML_TOL`).
    tau2 : ndarray, shape (..., V), optional
        Starting values (default ``max(0, var(y) - mean(v))``, as ``metansue``).

    Returns
    -------
    ndarray, shape (..., V)
        tau2 >= 0.

    References
    ----------
    Viechtbauer (2005), eqs. 10-11.
    """
    max_iter = REML_MAX_ITER if max_iter is None else int(max_iter)
    tol = REML_TOL if tol is None else float(tol)
    y2, shape = to_columns(y)
    v2, _ = to_columns(v)
    X = _design(X, y2.shape[0])
    t0 = _moment_start(y2, v2, tau2, shape)
    return from_columns(reml(y2, v2, X, t0, max_iter=max_iter, tol=tol), shape)


def fit_random_effects(y, v, X=None, C=None, max_iter: int | None = None,
                       tol: float | None = None, tau2=None, method: str = "dl") -> dict:
    """Random-effects meta-analysis (or meta-regression) at every voxel.

    Parameters
    ----------
    y, v : ndarray, shape (..., k, V)
        Study effect sizes (Hedges g) and their variances.
    X : ndarray, shape (k, p), optional
        Design matrix (default: intercept only).
    C : array-like, shape (p,), optional
        Hypothesis row (default: first coefficient).
    max_iter, tol, tau2 : optional
        REML updates, tolerance and start, as in :func:`reml_tau2` (REML only).
    method : {"dl", "reml"}
        Between-study variance estimator: DerSimonian-Laird (default, as SDM-PSI) or REML.

    Returns
    -------
    dict
        ``beta`` (..., V, p), ``cov`` (..., V, p, p), ``coef`` = C beta (..., V), ``var`` =
        C Cov C' (..., V), ``z`` = coef / sqrt(var), ``tau2``, ``Q`` (fixed-effect Q),
        ``df`` (= k - p, int), ``H2`` and ``I2`` (fraction, 0..1), all (..., V).
    """
    y2, shape = to_columns(y)
    v2, _ = to_columns(v)
    k = y2.shape[0]
    X = _design(X, k)
    C = hypothesis_row(C, X.shape[1])
    start = _moment_start(y2, v2, tau2, shape) if method == "reml" else None
    fit = fit_columns(y2, v2, X, method=method, tau2=start, max_iter=max_iter, tol=tol)
    df, tau2_hat = fit["df"], fit["tau2"]
    if df > 0:
        h2 = 1.0 + tau2_hat * fit["tr_pfe"] / df
        i2 = np.maximum(0.0, 1.0 - 1.0 / h2)
    else:
        h2 = np.ones_like(tau2_hat)
        i2 = np.zeros_like(tau2_hat)
    coef, var = contrast(fit["beta"], fit["cov"], C)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = coef / np.sqrt(var)
    return {
        "beta": from_columns(fit["beta"], shape), "cov": from_columns(fit["cov"], shape),
        "coef": from_columns(coef, shape), "var": from_columns(var, shape),
        "z": from_columns(z, shape), "tau2": from_columns(tau2_hat, shape),
        "Q": from_columns(fit["Q"], shape), "df": df, "H2": from_columns(h2, shape),
        "I2": from_columns(i2, shape),
    }


def q_to_z(q, df) -> np.ndarray:
    """z of a heterogeneity Q: ``Phi^-1(1 - P(chi2_df > Q))`` (SDM's ``_h_Q_z``)."""
    from scipy.stats import chi2, norm

    q = np.asarray(q, dtype=float)
    if df <= 0:
        return np.zeros_like(q)
    return norm.isf(np.clip(chi2.sf(q, df), 1e-300, 1.0 - 2.0**-53))  # finite at Q = 0


__all__ = ["REML_MAX_ITER", "REML_TOL", "reml_tau2", "fit_random_effects", "q_to_z"]
