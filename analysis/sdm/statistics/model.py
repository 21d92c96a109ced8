"""The random-effects model of every column: heterogeneity, tau2, coefficients.

``fit_columns`` is the one NumPy/CuPy implementation of the per-voxel random-effects
meta-analysis and meta-regression::

    Q, tr P_FE           fixed-effect heterogeneity (weights 1/v)
    tau2                 DerSimonian-Laird, or REML from a start (:mod:`.tau2`)
    W = diag(1/(v + tau2));  beta = (X'WX)^-1 X'Wy;  Cov(beta) = (X'WX)^-1

The estimator's non-compiled designs (:func:`analysis.sdm.statistics.random_effects.fit_random_effects`),
the NumPy/CuPy permutation kernels (:func:`analysis.sdm.inference.permutation.reml_fixed`) and Egger's
test (:func:`analysis.sdm.diagnostics.egger.egger_test`, a design per column) call it; the compiled kernels
of :mod:`analysis.sdm.statistics.re_kernels` are the one other implementation and are tested against it.

References
----------
DerSimonian R, Laird N (1986). Control Clin Trials 7:177-188.
Viechtbauer W (2005). J Educ Behav Stat 30:261-293.
"""

from __future__ import annotations

import numpy as np

from analysis.sdm.statistics.tau2 import (
    REML_MAX_ITER,
    REML_TOL,
    dersimonian_laird,
    fixed_effect_heterogeneity,
    reml,
)
from analysis.sdm.statistics.wls import is_intercept, weighted_least_squares

#: between-study variance estimators: SDM-PSI's default and its ``AccurateHeterogeneity`` option
HETEROGENEITY = ("dl", "reml")


def check_heterogeneity(method: str) -> str:
    """Validate a between-study variance estimator name.

    Parameters
    ----------
    method : str
        ``"dl"`` (DerSimonian-Laird) or ``"reml"``, in any case.

    Returns
    -------
    str
        The name in lower case.

    Raises
    ------
    ValueError
        Any other name.
    """
    method = str(method).lower()
    if method not in HETEROGENEITY:
        raise ValueError(f"heterogeneity must be one of {HETEROGENEITY}, got {method!r}")
    return method


def fit_columns(y, v, X=None, *, method: str = "dl", tau2=None, max_iter: int | None = None,
                tol: float | None = None, xp=np, ridge: float = 0.0) -> dict:
    """Random-effects fit of every column.

    Parameters
    ----------
    y, v : array, shape (k, N)
        Effects and their sampling variances.
    X : array, shape (k, p) or (k, N, p), optional
        Design shared by the columns or one per column (default: intercept only).
    method : {"dl", "reml"}
        Between-study variance: DerSimonian-Laird (closed form) or REML
        (:func:`analysis.sdm.statistics.tau2.reml`).
    tau2 : array, shape (N,), optional
        REML start (default: the DerSimonian-Laird value).
    max_iter, tol : optional
        REML updates and tolerance (default :data:`~analysis.sdm.statistics.tau2.REML_MAX_ITER`,
        :data:`~analysis.sdm.statistics.tau2.REML_TOL`).
    xp : module
        Array module (``numpy`` or ``cupy``).
    ridge : float
        See :func:`analysis.sdm.statistics.wls.weighted_least_squares`.

    Returns
    -------
    dict
        ``beta`` (N, p), ``cov`` (N, p, p), ``tau2`` (N,), ``Q`` (fixed-effect Q, N),
        ``tr_pfe`` (N,) and ``df`` (``k - p``, int).
    """
    method = check_heterogeneity(method)
    max_iter = REML_MAX_ITER if max_iter is None else int(max_iter)
    tol = REML_TOL if tol is None else float(tol)
    if X is not None and is_intercept(X):
        X = None
    k = y.shape[0]
    df = k - (1 if X is None else X.shape[-1])
    q, tr_pfe = fixed_effect_heterogeneity(y, v, X, xp=xp, ridge=ridge)
    t = dersimonian_laird(q, tr_pfe, df, xp)
    if method == "reml":
        t = reml(y, v, X, t if tau2 is None else tau2, max_iter=max_iter, tol=tol, xp=xp,
                 ridge=ridge)
    beta, cov, _ = weighted_least_squares(y, 1.0 / (v + t), X, xp=xp, ridge=ridge)
    return {"beta": beta, "cov": cov, "tau2": t, "Q": q, "tr_pfe": tr_pfe, "df": df}
