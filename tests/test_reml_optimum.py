"""REML reaches the maximum of the restricted likelihood (checked by bounded 1-D search).

Plain Fisher scoring stopped short of the maximum on some voxels of meta-regressions
(restricted -log-likelihood 0.64 above the optimum in this very setting); the Newton step
with Fisher fallback must not.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from analysis.sdm.statistics.random_effects import reml_tau2
from analysis.sdm.statistics.re_kernels import pooled_fit


def _reml_nll(tau2, y, v, X):
    w = 1.0 / (v + tau2)
    M = X.T @ (w[:, None] * X)
    b = np.linalg.solve(M, X.T @ (w * y))
    r = y - X @ b
    return 0.5 * (np.log(v + tau2).sum() + np.linalg.slogdet(M)[1] + (w * r * r).sum())


def _optimum(y, v, X):
    res = minimize_scalar(lambda a: _reml_nll(a, y, v, X), bounds=(0, 20), method="bounded",
                          options={"xatol": 1e-10})
    return min(res.fun, _reml_nll(0.0, y, v, X))


@pytest.mark.parametrize("design", ["intercept", "regression"])
def test_reml_reaches_the_optimum(design):
    rng = np.random.default_rng(1)
    k, n = 11, 300
    X = np.ones((k, 1)) if design == "intercept" else np.c_[np.ones(k), rng.normal(size=k)]
    if design == "intercept":  # the same draws as the regression case, for the same voxels
        rng.normal(size=k)
    y = rng.normal(0, 0.5, (k, n)) * rng.uniform(0.2, 2, (1, n))
    v = rng.uniform(0.05, 0.3, (k, n))
    tau2 = reml_tau2(y, v, None if design == "intercept" else X)
    gap = [_reml_nll(tau2[i], y[:, i], v[:, i], X) - _optimum(y[:, i], v[:, i], X)
           for i in range(n)]
    assert max(gap) < 1e-7


@pytest.mark.parametrize("design", ["intercept", "regression"])
def test_compiled_reml_reaches_the_optimum(design):
    """The compiled fit shared by the estimator and the permutation kernels, with REML."""
    rng = np.random.default_rng(2)
    k, n = 9, 200
    n1 = rng.integers(10, 40, k).astype(float)
    k1, k2 = 2.0 / n1, np.full(k, 0.02)
    y = (rng.normal(0, 0.5, (1, k, n)) * rng.uniform(0.2, 2, (1, 1, n)))
    two = np.repeat(y, 2, axis=0).astype(np.float32)  # two identical imputations (Rubin needs m > 1)
    X = np.ones((k, 1)) if design == "intercept" else np.c_[np.ones(k), rng.normal(size=k)]
    tau2 = pooled_fit(two, k1, k2, X, heterogeneity="reml", max_iter=50, tol=1e-9)["tau2"]
    yd = y[0].astype(np.float32).astype(float)
    v = k1[:, None] + k2[:, None] * yd ** 2
    gap = [_reml_nll(tau2[i], yd[:, i], v[:, i], X) - _optimum(yd[:, i], v[:, i], X)
           for i in range(n)]
    assert max(gap) < 1e-6
