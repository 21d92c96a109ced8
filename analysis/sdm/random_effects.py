"""Random-effects meta-analysis and meta-regression, vectorised over voxels.

Every function works on arrays whose study axis is the second-to-last one and whose voxel axis
is the last one: ``(k, V)`` or ``(m, k, V)`` (``m`` imputations). The design ``X`` (``k x p``) and
the hypothesis row ``C`` (``p``) are shared by all voxels.

The model is the standard random-effects model. Its between-study variance is
DerSimonian-Laird in its meta-regression form (``method="dl"``, SDM-PSI's default; it reproduces
SDM-PSI's own per-imputation output, Li et al. 2023) or REML (``method="reml"``, SDM-PSI's
``AccurateHeterogeneity``; the ``metansue`` R package, Radua et al., ``.tau2.reml``)::

    DL:   tau2 = max(0, (Q - df) / tr P_fe)
    REML: W = diag(1/(v + tau2));  P = W - W X (X'WX)^-1 X'W
          tau2 <- max(0, tau2 + (y'PPy - tr P) / info)   (Newton, Fisher scoring fallback)
    beta = (X'WX)^-1 X'Wy;   Cov = (X'WX)^-1
    Q = y' P_fe y  (fixed-effect weights 1/v);  df = k - p
    H2 = 1 + tau2 tr(P_fe) / df;  I2 = 1 - 1/H2

The compiled fits of the estimator and the permutation test (:mod:`analysis.sdm.re_kernels`) are
tested against these functions.

References
----------
DerSimonian R, Laird N (1986). Meta-analysis in clinical trials. Control Clin Trials 7:177-188.
Viechtbauer W (2005). Bias and efficiency of meta-analytic variance estimators in the
random-effects model. J Educ Behav Stat 30:261-293.
Albajes-Eizagirre A et al. (2019). Voxel-based meta-analysis via permutation of subject images
(PSI). NeuroImage 186:174-184.
"""

from __future__ import annotations

import logging

import numpy as np

LGR = logging.getLogger(__name__)

#: REML: at most this many Fisher-scoring updates per fit, stopping once tau2 moves less than
#: :data:`REML_TOL` (metafor's defaults, Viechtbauer 2010)
REML_MAX_ITER = 50
REML_TOL = 1e-6


def _defaults() -> tuple[int, float]:
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


def _contrast(C, p: int) -> np.ndarray:
    if C is None:
        C = np.zeros(p)
        C[0] = 1.0
    C = np.asarray(C, dtype=float).ravel()
    if C.shape[0] != p:
        raise ValueError(f"hypothesis has {C.shape[0]} entries but the design has {p} columns")
    return C


def _to_2d(a: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(..., k, V) -> (k, N) with N = prod(...) * V; returns the leading shape to undo it."""
    a = np.asarray(a, dtype=float)
    lead = a.shape[:-2]
    k, nv = a.shape[-2:]
    flat = np.moveaxis(a.reshape((-1, k, nv)), 1, 0).reshape(k, -1)
    return flat, (*lead, nv)


def _from_2d(a: np.ndarray, shape: tuple) -> np.ndarray:
    """(N,) or (N, ...) -> shape + trailing."""
    return a.reshape(shape + a.shape[1:])


def _wls(y, w, X):
    """Weighted least squares per column: returns beta (N, p), Minv (N, p, p), resid (k, N)."""
    p = X.shape[1]
    if p == 1 and np.all(X == 1):
        sw = w.sum(0)
        beta = ((w * y).sum(0) / sw)[:, None]
        minv = (1.0 / sw)[:, None, None]
        return beta, minv, y - beta[:, 0]
    M = np.einsum("kp,kn,kq->npq", X, w, X)
    b = np.einsum("kp,kn->np", X, w * y)
    minv = np.linalg.inv(M)
    beta = np.einsum("npq,nq->np", minv, b)
    return beta, minv, y - X @ beta.T


def _leverage(X, minv):
    """h_i = x_i' Minv x_i, shape (k, N)."""
    if X.shape[1] == 1:
        return (X[:, 0] ** 2)[:, None] * minv[None, :, 0, 0]
    return np.einsum("kp,npq,kq->kn", X, minv, X)


def _reml_2d(y, v, X, tau2, max_iter, tol):
    """Newton (Fisher fallback) REML on (k, N) arrays; only unconverged columns are updated."""
    tau2 = tau2.copy()
    active = np.arange(y.shape[1])
    for _ in range(max_iter):
        if active.size == 0:
            break
        ya, va, ta = y[:, active], v[:, active], tau2[active]
        w = 1.0 / (va + ta)
        _, minv, r = _wls(ya, w, X)
        h = _leverage(X, minv)
        w2 = w * w
        ypppy = (w2 * r * r).sum(0)
        tr_p = w.sum(0) - (w2 * h).sum(0)
        if X.shape[1] == 1 and np.all(X == 1):
            a = w2.sum(0) * minv[:, 0, 0]
            tr_bb = a * a
        else:
            A = np.einsum("kp,kn,kq->npq", X, w2, X)
            B = minv @ A
            tr_bb = np.einsum("npq,nqp->n", B, B)
        tr_pp = w2.sum(0) - 2.0 * (w2 * w * h).sum(0) + tr_bb
        # Newton step on the REML log-likelihood (observed information 2 y'PPPy - tr(PP)),
        # Fisher scoring where the observed information is not positive: plain Fisher
        # scoring can stop short of the maximum on permuted or imputed data.
        py = w * r
        u = np.einsum("kp,kn->np", X, w * py)
        yp3y = (w * py * py).sum(0) - np.einsum("np,npq,nq->n", u, minv, u)
        obs = 2.0 * yp3y - tr_pp
        with np.errstate(invalid="ignore", divide="ignore"):
            step = (ypppy - tr_p) / np.where(obs > 0, obs, tr_pp)
        new = np.maximum(0.0, ta + np.where(np.isfinite(step), step, 0.0))
        tau2[active] = new
        active = active[np.abs(new - ta) >= tol]
    if active.size:
        LGR.debug("REML: %d columns not converged after %d iterations", active.size, max_iter)
    return tau2


def reml_tau2(y, v, X=None, max_iter: int | None = None, tol: float | None = None, tau2=None):
    """REML estimate of the between-study variance by Fisher scoring, for every voxel.

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
    Viechtbauer (2005), eq. 11 (Fisher scoring for REML).
    """
    d_iter, d_tol = _defaults()
    max_iter = d_iter if max_iter is None else int(max_iter)
    tol = d_tol if tol is None else float(tol)
    y2, shape = _to_2d(y)
    v2, _ = _to_2d(v)
    X = _design(X, y2.shape[0])
    if tau2 is None:
        t0 = np.maximum(0.0, y2.var(0, ddof=1) - v2.mean(0)) if y2.shape[0] > 1 else 0 * y2[0]
    else:
        t0 = np.broadcast_to(np.asarray(tau2, dtype=float), shape).reshape(-1)
    return _from_2d(_reml_2d(y2, v2, X, t0, max_iter, tol), shape)


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
        Passed to :func:`reml_tau2` (REML only).
    method : {"dl", "reml"}
        Between-study variance estimator: DerSimonian-Laird (default, as SDM-PSI) or REML.

    Returns
    -------
    dict
        ``beta`` (..., V, p), ``cov`` (..., V, p, p), ``coef`` = C beta (..., V), ``var`` =
        C Cov C' (..., V), ``z`` = coef / sqrt(var), ``tau2``, ``Q`` (fixed-effect Q),
        ``df`` (= k - p, int), ``H2`` and ``I2`` (fraction, 0..1), all (..., V).
    """
    d_iter, d_tol = _defaults()
    max_iter = d_iter if max_iter is None else int(max_iter)
    tol = d_tol if tol is None else float(tol)
    y2, shape = _to_2d(y)
    v2, _ = _to_2d(v)
    k = y2.shape[0]
    X = _design(X, k)
    C = _contrast(C, X.shape[1])
    df = k - X.shape[1]
    # fixed-effect heterogeneity
    wf = 1.0 / v2
    _, minv_fe, r_fe = _wls(y2, wf, X)
    q = np.maximum(0.0, (wf * r_fe * r_fe).sum(0))
    tr_pfe = wf.sum(0) - (wf * wf * _leverage(X, minv_fe)).sum(0)
    if method == "dl":
        with np.errstate(invalid="ignore", divide="ignore"):
            tau2_hat = np.where(tr_pfe > 0, (q - df) / tr_pfe, 0.0)
        tau2_hat = np.maximum(0.0, np.where(np.isfinite(tau2_hat), tau2_hat, 0.0))
    elif method == "reml":
        if tau2 is None:
            t0 = np.maximum(0.0, y2.var(0, ddof=1) - v2.mean(0)) if k > 1 else 0 * y2[0]
        else:
            t0 = np.broadcast_to(np.asarray(tau2, dtype=float), shape).reshape(-1).copy()
        tau2_hat = _reml_2d(y2, v2, X, t0, max_iter, tol)
    else:
        raise ValueError(f"method must be 'dl' or 'reml', got {method!r}")
    w = 1.0 / (v2 + tau2_hat)
    beta, cov, _ = _wls(y2, w, X)
    if df > 0:
        h2 = 1.0 + tau2_hat * tr_pfe / df
        i2 = np.maximum(0.0, 1.0 - 1.0 / h2)
    else:
        h2 = np.ones_like(tau2_hat)
        i2 = np.zeros_like(tau2_hat)
    coef = beta @ C
    var = np.einsum("p,npq,q->n", C, cov, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = coef / np.sqrt(var)
    out = {
        "beta": _from_2d(beta, shape), "cov": _from_2d(cov, shape),
        "coef": _from_2d(coef, shape), "var": _from_2d(var, shape), "z": _from_2d(z, shape),
        "tau2": _from_2d(tau2_hat, shape), "Q": _from_2d(q, shape), "df": df,
        "H2": _from_2d(h2, shape), "I2": _from_2d(i2, shape),
    }
    return out


def q_to_z(q, df) -> np.ndarray:
    """z of a heterogeneity Q: ``Phi^-1(1 - P(chi2_df > Q))`` (SDM's ``_h_Q_z``)."""
    from scipy.stats import chi2, norm

    q = np.asarray(q, dtype=float)
    if df <= 0:
        return np.zeros_like(q)
    return norm.isf(np.clip(chi2.sf(q, df), 1e-300, 1.0 - 2.0**-53))  # finite at Q = 0


__all__ = ["reml_tau2", "fit_random_effects", "q_to_z"]
