"""Egger's regression test for small-study effects on imputed study images, Rubin-pooled.

After ``metabias.meta.nsue`` of the ``metansue`` R package (Radua): for each imputation j the
study standard error ``sqrt(v(y_ij))`` is added as an extra column of the design, a REML
random-effects meta-regression is fitted, and its coefficient ``b_j`` and variance are pooled
with Rubin's rules; ``z = b / sqrt(var)``, two-tailed p.

References
----------
Egger M, Davey Smith G, Schneider M, Minder C (1997). Bias in meta-analysis detected by a simple,
graphical test. BMJ 315:629-634.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.stats import norm

from analysis.sdm.metansue import variance_coefficients
from analysis.sdm.random_effects import _defaults
from analysis.sdm.rubin import pool_scalar

LGR = logging.getLogger(__name__)


def _reml_percolumn(y, v, X, tau2, max_iter, tol):
    """REML Fisher scoring with a design that differs per column: y, v (k, N), X (k, N, p)."""
    tau2 = tau2.copy()
    eye = 1e-12 * np.eye(X.shape[2])
    for _ in range(max_iter):
        w = 1.0 / (v + tau2)
        M = np.einsum("knp,kn,knq->npq", X, w, X) + eye
        minv = np.linalg.inv(M)
        beta = np.einsum("npq,knq,kn->np", minv, X, w * y)
        r = y - np.einsum("knp,np->kn", X, beta)
        h = np.einsum("knp,npq,knq->kn", X, minv, X)
        w2 = w * w
        A = np.einsum("knp,kn,knq->npq", X, w2, X)
        B = minv @ A
        tr_pp = w2.sum(0) - 2.0 * (w2 * w * h).sum(0) + np.einsum("npq,nqp->n", B, B)
        tr_p = w.sum(0) - (w2 * h).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = ((w2 * r * r).sum(0) - tr_p) / tr_pp
        new = np.maximum(0.0, tau2 + np.where(np.isfinite(step), step, 0.0))
        done = np.all(np.abs(new - tau2) < tol)
        tau2 = new
        if done:
            break
    w = 1.0 / (v + tau2)
    minv = np.linalg.inv(np.einsum("knp,kn,knq->npq", X, w, X) + eye)
    beta = np.einsum("npq,knq,kn->np", minv, X, w * y)
    return beta, minv, tau2


def egger_test(imputed, n1, n2=None, X=None, tau2=None, max_iter=None, tol=None) -> dict:
    """Rubin-pooled Egger test at every voxel column of ``imputed``.

    Parameters
    ----------
    imputed : ndarray, shape (m, k, N)
        Imputed study effect sizes (Hedges g) at N voxels (a few peaks, or a whole map in
        chunks).
    n1, n2 : array-like, shape (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    X : ndarray, shape (k, p), optional
        Design of the model (default: intercept); the SE column is appended.
    tau2 : ndarray, shape (N,), optional
        Starting tau2 (e.g. the MetaNSUE MLE).

    Returns
    -------
    dict of (N,) arrays
        ``b`` (pooled SE coefficient), ``var``, ``z``, ``p`` (two-tailed).
    """
    d_iter, d_tol = _defaults()
    max_iter = d_iter if max_iter is None else max_iter
    tol = d_tol if tol is None else tol
    y = np.asarray(imputed, dtype=float)
    m, k, n = y.shape
    k1, k2 = variance_coefficients(n1, n2)
    X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    p = X.shape[1]
    t0 = np.zeros(n) if tau2 is None else np.broadcast_to(np.asarray(tau2, float), (n,))
    b = np.empty((m, n))
    bv = np.empty((m, n))
    for j in range(m):
        yj = y[j]
        vj = k1[:, None] + k2[:, None] * yj * yj
        Xj = np.concatenate([np.broadcast_to(X[:, None, :], (k, n, p)),
                             np.sqrt(vj)[..., None]], axis=2)
        beta, minv, _ = _reml_percolumn(yj, vj, Xj, np.array(t0, dtype=float), max_iter, tol)
        b[j] = beta[:, p]
        bv[j] = minv[:, p, p]
    bbar, var = pool_scalar(b, bv)
    z = bbar / np.sqrt(var)
    return {"b": bbar, "var": var, "z": z, "p": 2.0 * norm.sf(np.abs(z))}
