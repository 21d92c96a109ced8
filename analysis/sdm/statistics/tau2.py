"""Between-study variance (tau2) of the random-effects model, column by column.

With the fixed-effect weights ``W_FE = diag(1/v)`` and the projection
``P_FE = W_FE - W_FE X (X' W_FE X)^-1 X' W_FE``, the fixed-effect heterogeneity statistic is
``Q = y' P_FE y`` on ``df = k - p`` degrees of freedom, and

- **DerSimonian-Laird** in its meta-regression form (DerSimonian & Laird 1986; SDM-PSI's
  default, ``AccurateHeterogeneity=false``, which it reproduces to SDM-PSI's printed precision,
  Li et al. 2023)::

      tau2 = max(0, (Q - df) / tr P_FE)

- **REML** (Viechtbauer 2005; SDM-PSI's ``AccurateHeterogeneity=true``), the maximum over
  ``tau2 >= 0`` of the restricted log-likelihood
  ``l(tau2) = -1/2 [sum ln(v + tau2) + ln|X'WX| + y'Py]``, ``W = diag(1/(v + tau2))``, with score
  ``(y'PPy - tr P) / 2`` and observed information ``y'PPPy - tr(PP) / 2``. Each update is a
  Newton step ``(y'PPy - tr P) / (2 y'PPPy - tr PP)`` where the log-likelihood is locally
  concave and the Fisher-scoring step ``(y'PPy - tr P) / tr PP`` (Viechtbauer 2005, eq. 11)
  elsewhere, clipped at 0. Plain Fisher scoring can stop short of the maximum (it oscillates
  or crawls for many iterations on permuted and on imputed data: a restricted
  -log-likelihood 0.64 above the optimum was observed on a meta-regression); the Newton step
  converges in about five updates.

Designs are ``None`` (intercept), shared ``(k, p)`` or per column ``(k, N, p)``
(:mod:`.wls`); ``xp`` is the array module (``numpy`` or ``cupy``).

References
----------
DerSimonian R, Laird N (1986). Meta-analysis in clinical trials. Control Clin Trials 7:177-188.
Viechtbauer W (2005). Bias and efficiency of meta-analytic variance estimators in the
random-effects model. J Educ Behav Stat 30:261-293.
Viechtbauer W (2010). Conducting meta-analyses in R with the metafor package. J Stat Softw
36(3):1-48.
Li X et al. (2023). SDM-PSI ``extract`` output of a lifespan meta-regression (repository
guochun-yang/Cognitive_Control_Developmental_Trajectory).
"""

from __future__ import annotations

import logging

import numpy as np

from analysis.sdm.statistics.wls import (
    cross,
    gram,
    is_intercept,
    leverage,
    weighted_least_squares,
)

LGR = logging.getLogger(__name__)

#: REML: at most this many updates per fit, stopping once tau2 moves less than
#: :data:`REML_TOL` (metafor's defaults, Viechtbauer 2010)
REML_MAX_ITER = 50
REML_TOL = 1e-6


def fixed_effect_heterogeneity(y, v, X=None, *, xp=np, ridge: float = 0.0) -> tuple:
    """Fixed-effect ``Q = y' P_FE y`` and ``tr P_FE`` of every column.

    Parameters
    ----------
    y, v : array, shape (k, N)
        Effects and their sampling variances.
    X : array, shape (k, p) or (k, N, p), optional
        Design (default: intercept only).
    xp : module
        Array module.
    ridge : float
        See :func:`analysis.sdm.statistics.wls.weighted_least_squares`.

    Returns
    -------
    q : array, shape (N,)
        Q, clipped at 0 (rounding).
    tr_pfe : array, shape (N,)
        ``tr P_FE = sum w - sum w^2 h`` (``h`` the leverages).
    """
    w = 1.0 / v
    if X is None or is_intercept(X):
        sw = w.sum(0)
        r = y - ((w * y).sum(0) / sw)[None, :]
        return xp.maximum(0.0, (w * (r * r)).sum(0)), sw - (w * w).sum(0) / sw
    X = xp.asarray(X, dtype=xp.float64)
    _, minv, r = weighted_least_squares(y, w, X, xp=xp, ridge=ridge)
    q = xp.maximum(0.0, (w * r * r).sum(0))
    return q, w.sum(0) - (w * w * leverage(X, minv, xp)).sum(0)


def dersimonian_laird(q, tr_pfe, df, xp=np):
    """DerSimonian-Laird tau2, ``max(0, (Q - df) / tr P_FE)`` (0 where it is not finite).

    Parameters
    ----------
    q, tr_pfe : array, shape (N,)
        From :func:`fixed_effect_heterogeneity`.
    df : int
        ``k - p``.
    xp : module
        Array module.

    Returns
    -------
    array, shape (N,)

    References
    ----------
    DerSimonian & Laird (1986); its meta-regression form as in metafor (Viechtbauer 2010).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        t = xp.where(tr_pfe > 0, (q - df) / tr_pfe, 0.0)
    return xp.maximum(0.0, xp.where(xp.isfinite(t), t, 0.0))


def dl_tau2(y, v, X=None, *, xp=np, ridge: float = 0.0):
    """DerSimonian-Laird tau2 of every column from the effects (see :func:`dersimonian_laird`).

    Parameters
    ----------
    y, v : array, shape (k, N)
    X : array, shape (k, p) or (k, N, p), optional
    xp : module
    ridge : float

    Returns
    -------
    array, shape (N,)
    """
    p = 1 if X is None else X.shape[-1]
    q, tr_pfe = fixed_effect_heterogeneity(y, v, X, xp=xp, ridge=ridge)
    return dersimonian_laird(q, tr_pfe, y.shape[0] - p, xp)


def _take(X, cols):
    """The design of the columns ``cols`` (a shared design is every column's)."""
    return X if X.ndim == 2 else X[:, cols]


def reml(y, v, X=None, tau2=None, *, max_iter: int = REML_MAX_ITER, tol: float = REML_TOL,
         xp=np, ridge: float = 0.0):
    """REML tau2 of every column: Newton steps, Fisher scoring where not locally concave.

    Parameters
    ----------
    y, v : array, shape (k, N)
        Effects and their sampling variances.
    X : array, shape (k, p) or (k, N, p), optional
        Design shared by the columns or one per column (default: intercept only).
    tau2 : array, shape (N,), optional
        Starting values (default: DerSimonian-Laird, :func:`dl_tau2`).
    max_iter : int
        At most this many updates per column (0: the start is returned).
    tol : float
        A column stops once its tau2 moves by less than ``tol`` (0: always ``max_iter``
        updates).
    xp : module
        Array module (``numpy`` or ``cupy``).
    ridge : float
        See :func:`analysis.sdm.statistics.wls.weighted_least_squares`.

    Returns
    -------
    array, shape (N,)
        tau2 >= 0.

    References
    ----------
    Viechtbauer (2005), eqs. 10-11; Newton step with the observed information of the
    restricted log-likelihood.
    """
    intercept = X is None or is_intercept(X)
    X = xp.ones((y.shape[0], 1)) if X is None else xp.asarray(X, dtype=xp.float64)
    if tau2 is None:
        tau2 = dl_tau2(y, v, None if intercept else X, xp=xp, ridge=ridge)
    tau2 = xp.array(tau2, dtype=xp.float64)
    fast = intercept and not ridge
    active = xp.arange(y.shape[1])
    for _ in range(int(max_iter)):
        if active.size == 0:
            break
        ya, va, ta, Xa = y[:, active], v[:, active], tau2[active], _take(X, active)
        w = 1.0 / (va + ta)
        _, minv, r = weighted_least_squares(ya, w, None if fast else Xa, xp=xp, ridge=ridge)
        h = leverage(Xa, minv, xp)
        w2 = w * w
        ypppy = (w2 * r * r).sum(0)
        tr_p = w.sum(0) - (w2 * h).sum(0)
        if fast:
            a = w2.sum(0) * minv[:, 0, 0]
            tr_bb = a * a
        else:
            B = minv @ gram(Xa, w2, xp)
            tr_bb = xp.einsum("npq,nqp->n", B, B)
        tr_pp = w2.sum(0) - 2.0 * (w2 * w * h).sum(0) + tr_bb
        py = w * r
        u = cross(Xa, w * py, xp)
        yp3y = (w * py * py).sum(0) - xp.einsum("np,npq,nq->n", u, minv, u)
        obs = 2.0 * yp3y - tr_pp
        score = ypppy - tr_p
        with np.errstate(invalid="ignore", divide="ignore"):
            step = xp.where(obs > 0, score / xp.where(obs > 0, obs, 1.0),
                            xp.where(tr_pp > 0, score / xp.where(tr_pp > 0, tr_pp, 1.0), 0.0))
        new = xp.maximum(0.0, ta + xp.where(xp.isfinite(step), step, 0.0))
        tau2[active] = new
        active = active[xp.abs(new - ta) >= tol]
    if active.size:
        LGR.debug("REML: %d columns not converged after %d updates", int(active.size),
                  int(max_iter))
    return tau2
