"""Egger's regression test for small-study effects on imputed study images, Rubin-pooled.

After ``metabias.meta.nsue`` of the ``metansue`` R package (Radua): for each imputation j the
study standard error ``sqrt(v(y_ij))`` is added as an extra column of the design, a REML
random-effects meta-regression is fitted (the statistics core,
:func:`analysis.sdm.statistics.model.fit_columns`, with a design per voxel: Newton steps to the
maximum of the restricted likelihood), and its coefficient ``b_j`` and variance are pooled with
Rubin's rules; ``z = b / sqrt(var)``, two-tailed p.

References
----------
Egger M, Davey Smith G, Schneider M, Minder C (1997). Bias in meta-analysis detected by a simple,
graphical test. BMJ 315:629-634.
Viechtbauer W (2005). J Educ Behav Stat 30:261-293 (REML).
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.model import fit_columns
from analysis.sdm.statistics.pooling import rubin_z

#: added to the diagonal of X'WX: the standard-error column of a voxel whose studies all have
#: the same variance is the intercept's multiple, and the fit must stay solvable there
RIDGE = 1e-12


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
        REML start (default: the DerSimonian-Laird value of each imputation).
    max_iter, tol : optional
        REML updates and tolerance (default
        :data:`analysis.sdm.statistics.tau2.REML_MAX_ITER` and ``REML_TOL``).

    Returns
    -------
    dict of (N,) arrays
        ``b`` (pooled SE coefficient), ``var``, ``z``, ``p`` (two-tailed).
    """
    y = np.asarray(imputed, dtype=float)
    m, k, n = y.shape
    k1, k2 = variance_coefficients(n1, n2)
    X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    p = X.shape[1]
    t0 = None if tau2 is None else np.broadcast_to(np.asarray(tau2, float), (n,))
    b = np.empty((m, n))
    bv = np.empty((m, n))
    for j in range(m):
        yj = y[j]
        vj = k1[:, None] + k2[:, None] * yj * yj
        Xj = np.concatenate([np.broadcast_to(X[:, None, :], (k, n, p)),
                             np.sqrt(vj)[..., None]], axis=2)
        fit = fit_columns(yj, vj, Xj, method="reml", tau2=t0, max_iter=max_iter, tol=tol,
                          ridge=RIDGE)
        b[j] = fit["beta"][:, p]
        bv[j] = fit["cov"][:, p, p]
    bbar, var, z = rubin_z(b, bv)
    return {"b": bbar, "var": var, "z": z, "p": 2.0 * norm.sf(np.abs(z))}
