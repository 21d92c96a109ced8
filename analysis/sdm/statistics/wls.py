"""Weighted least squares, column by column, on any array back-end.

Every function works on *columns*: the study axis is axis 0 and each of the ``N`` columns (a
voxel, or a voxel of one imputation) is a separate weighted regression. A design is

- ``None``: intercept only (sums instead of matrix algebra);
- ``(k, p)``: one design shared by all columns;
- ``(k, N, p)``: one design per column (e.g. Egger's test, whose last column is each column's
  own standard error).

For weights ``w`` (the inverse variances) the fit of column ``n`` is::

    M = X' W X,   beta = M^-1 X' W y,   Cov(beta) = M^-1,   r = y - X beta

and the leverages ``h_i = x_i' M^-1 x_i`` give the traces of the projection
``P = W - W X M^-1 X' W`` that the heterogeneity estimators need (:mod:`.tau2`). ``xp`` is the
array module (``numpy`` or ``cupy``, :func:`analysis.sdm.backend.array_module`); the design may
be a NumPy array on the host or an array of ``xp``.

References
----------
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press, ch. 8.
"""

from __future__ import annotations

import numpy as np


def to_columns(a, xp=np) -> tuple:
    """``(..., k, V)`` -> ``(k, N)`` with ``N = prod(...) * V``, and the shape to undo it.

    Parameters
    ----------
    a : array, shape (..., k, V)
    xp : module
        Array module of ``a``.

    Returns
    -------
    flat : array, shape (k, N)
    shape : tuple
        ``(..., V)``, for :func:`from_columns`.
    """
    a = xp.asarray(a, dtype=xp.float64)
    lead = a.shape[:-2]
    k, nv = a.shape[-2:]
    flat = xp.moveaxis(a.reshape((-1, k, nv)), 1, 0).reshape(k, -1)
    return flat, (*lead, nv)


def from_columns(a, shape: tuple):
    """``(N,)`` or ``(N, ...)`` -> ``shape + trailing`` (inverse of :func:`to_columns`)."""
    return a.reshape(shape + a.shape[1:])


def is_intercept(X) -> bool:
    """Whether ``X`` is the intercept alone (``None`` or one column of ones)."""
    if X is None:
        return True
    return X.ndim == 2 and X.shape[1] == 1 and bool((X == 1).all())


def _sub(X, index: str) -> str:
    """einsum subscripts of a shared (``k<index>``) or per-column (``kn<index>``) design."""
    return f"k{index}" if X.ndim == 2 else f"kn{index}"


def gram(X, w, xp=np):
    """``X' W X`` of every column, shape (N, p, p)."""
    return xp.einsum(f"{_sub(X, 'p')},kn,{_sub(X, 'q')}->npq", X, w, X)


def cross(X, u, xp=np):
    """``X' u`` of every column, shape (N, p)."""
    return xp.einsum(f"{_sub(X, 'p')},kn->np", X, u)


def leverage(X, minv, xp=np):
    """``h_i = x_i' M^-1 x_i`` of every study and column, shape (k, N)."""
    if X.ndim == 2 and X.shape[1] == 1:
        return (X[:, 0] ** 2)[:, None] * minv[None, :, 0, 0]
    return xp.einsum(f"{_sub(X, 'p')},npq,{_sub(X, 'q')}->kn", X, minv, X)


def weighted_least_squares(y, w, X=None, *, xp=np, ridge: float = 0.0) -> tuple:
    """Weighted least squares of every column.

    Parameters
    ----------
    y, w : array, shape (k, N)
        Responses and weights.
    X : array, shape (k, p) or (k, N, p), optional
        Design shared by the columns or one per column (default: intercept only).
    xp : module
        Array module (``numpy`` or ``cupy``).
    ridge : float
        Added to the diagonal of ``X'WX`` (0 by default; a tiny value keeps per-column designs
        that are singular at a few columns solvable).

    Returns
    -------
    beta : array, shape (N, p)
    minv : array, shape (N, p, p)
        ``(X'WX)^-1``, the covariance of ``beta`` when ``w`` are inverse variances.
    resid : array, shape (k, N)
    """
    if X is None or (is_intercept(X) and not ridge):
        sw = w.sum(0)
        beta = ((w * y).sum(0) / sw)[:, None]
        minv = (1.0 / sw)[:, None, None]
        return beta, minv, y - beta[:, 0]
    X = xp.asarray(X, dtype=xp.float64)
    M = gram(X, w, xp)
    if ridge:
        M = M + ridge * xp.eye(X.shape[-1])
    minv = xp.linalg.inv(M)
    beta = xp.einsum("npq,nq->np", minv, cross(X, w * y, xp))
    if X.ndim == 2:
        return beta, minv, y - X @ beta.T
    return beta, minv, y - xp.einsum("knp,np->kn", X, beta)
