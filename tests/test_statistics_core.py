"""The statistics core (:mod:`analysis.sdm.statistics`) and the compiled kernels checked against it.

The compiled kernels of :mod:`analysis.sdm.statistics.re_kernels` are the one other implementation of the
core's formulas: on random inputs (one- and two-sample studies, random designs, permutation
coefficients and study orders) they must give the core's numbers to rounding. The core itself is
checked against independent computations: bounded 1-D maximisation of the restricted likelihood
(REML), the moments of the noncentral t distribution (Hedges-g variance).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import minimize_scalar

from analysis.sdm.diagnostics.egger import egger_test
from analysis.sdm.statistics import effect_sizes
from analysis.sdm.statistics.hedges import hedges_j, variance_coefficients
from analysis.sdm.statistics.hypothesis import contrast, hypothesis_row
from analysis.sdm.statistics.metansue import mle as metansue_mle
from analysis.sdm.statistics.model import fit_columns
from analysis.sdm.statistics.pooling import pool_chi2, pool_sqrt_mean, rubin_pool
from analysis.sdm.statistics.re_kernels import (
    blocked_layout,
    compiled_design,
    permuted_mean,
    permuted_slope,
    pooled_fit,
    run_kernel,
)
from analysis.sdm.statistics.tau2 import reml
from analysis.sdm.statistics.wls import to_columns


# --------------------------------------------------------------------------------------------
# independent references
def _reml_nll(tau2, y, v, X):
    """Restricted -log-likelihood of one voxel (up to a constant)."""
    w = 1.0 / (v + tau2)
    M = X.T @ (w[:, None] * X)
    b = np.linalg.solve(M, X.T @ (w * y))
    r = y - X @ b
    return 0.5 * (np.log(v + tau2).sum() + np.linalg.slogdet(M)[1] + (w * r * r).sum())


def _reml_optimum(y, v, X):
    """Minimum of :func:`_reml_nll` over tau2 >= 0: a grid, then bounded Brent around its best."""
    grid = np.r_[0.0, np.geomspace(1e-4, 20.0, 300)]
    vals = [_reml_nll(t, y, v, X) for t in grid]
    i = int(np.argmin(vals))
    res = minimize_scalar(lambda t: _reml_nll(t, y, v, X), method="bounded",
                          bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                          options={"xatol": 1e-12})
    return (res.x, res.fun) if res.fun < vals[i] else (grid[i], vals[i])


def _studies(rng, k):
    """Sample sizes of ``k`` studies, about half of them two-sample."""
    n1 = rng.integers(8, 60, k).astype(float)
    n2 = np.where(rng.random(k) < 0.5, rng.integers(8, 60, k), np.nan)
    return n1, n2


def _core_pooled(G, k1, k2, X, C, method, **kw):
    """The core's fit of every imputation of ``G`` (m, k, V), pooled with Rubin's rules."""
    m = G.shape[0]
    coef, var, tau2, i2, q = [], [], [], [], []
    for j in range(m):
        y = G[j].astype(np.float64)
        fit = fit_columns(y, k1[:, None] + k2[:, None] * y * y, X, method=method, **kw)
        c, s2 = contrast(fit["beta"], fit["cov"], C)
        coef.append(c)
        var.append(s2)
        tau2.append(fit["tau2"])
        df = fit["df"]
        i2.append(fit["tau2"] / (fit["tau2"] + df / fit["tr_pfe"]))
        q.append(fit["Q"])
    g, total = rubin_pool(np.array(coef), np.array(var))
    qp = pool_chi2(np.array(q), df)
    return {"g": g, "var": total, "tau2": pool_sqrt_mean(np.array(tau2)),
            "i2": pool_sqrt_mean(np.array(i2)), "q": qp["Q"], "q_p": qp["p"]}


# --------------------------------------------------------------------------------------------
# the core
def test_reml_with_a_design_per_column_reaches_the_optimum():
    """Egger's shape: ``[1, sqrt(v)]`` differs at every voxel. Plain Fisher scoring stopped up
    to 0.32 short of the maximum of the restricted log-likelihood on these very voxels.
    """
    rng = np.random.default_rng(0)
    k, n = 11, 300
    y = rng.normal(0, 0.5, (k, n)) * rng.uniform(0.2, 2, (1, n))
    v = rng.uniform(0.05, 0.3, (k, n))
    X = np.concatenate([np.ones((k, n, 1)), np.sqrt(v)[..., None]], axis=2)
    tau2 = reml(y, v, X)
    gap = [_reml_nll(tau2[i], y[:, i], v[:, i], X[:, i]) - _reml_optimum(y[:, i], v[:, i],
                                                                          X[:, i])[1]
           for i in range(n)]
    assert max(gap) < 1e-8
    assert (tau2 > 0).sum() > 30 and (tau2 == 0).sum() > 30  # interior and boundary optima


@pytest.mark.parametrize("method", ["dl", "reml"])
def test_a_shared_design_and_its_per_column_copy_give_the_same_fit(method):
    rng = np.random.default_rng(1)
    k, n = 9, 50
    y = rng.normal(0.2, 0.4, (k, n))
    v = rng.uniform(0.02, 0.2, (k, n))
    X = np.c_[np.ones(k), rng.normal(size=k), rng.normal(size=k)]
    shared = fit_columns(y, v, X, method=method, max_iter=200, tol=1e-13)
    per = fit_columns(y, v, np.repeat(X[:, None, :], n, axis=1), method=method, max_iter=200,
                      tol=1e-13)
    for key in ("beta", "cov", "tau2", "Q", "tr_pfe"):
        np.testing.assert_allclose(per[key], shared[key], rtol=1e-10, atol=1e-13)
    assert per["df"] == shared["df"] == k - 3


def test_egger_fit_is_the_reml_optimum():
    """Egger's SE coefficient is that of the WLS fit at the maximum of the restricted
    likelihood (identical imputations: Rubin's rules return the single fit).
    """
    rng = np.random.default_rng(2)
    k, nv = 10, 40
    n1, n2 = _studies(rng, k)
    k1, k2 = variance_coefficients(n1, n2)
    g = rng.normal(0.3, 0.4, (k, nv)) * rng.uniform(0.3, 2, (1, nv))
    g += 1.5 * np.sqrt(k1)[:, None]  # a small-study effect
    out = egger_test(np.repeat(g[None], 3, axis=0), n1, n2)
    for j in range(nv):
        v = k1 + k2 * g[:, j] ** 2
        X = np.c_[np.ones(k), np.sqrt(v)]
        t, _ = _reml_optimum(g[:, j], v, X)
        w = 1.0 / (v + t)
        M = X.T @ (w[:, None] * X)
        b = np.linalg.solve(M, X.T @ (w * g[:, j]))
        assert out["b"][j] == pytest.approx(b[1], rel=1e-6, abs=1e-9)
        assert out["var"][j] == pytest.approx(np.linalg.inv(M)[1, 1], rel=1e-6)


def test_egger_at_a_voxel_does_not_depend_on_the_other_voxels():
    """Each voxel's REML iteration stops on its own convergence: testing a voxel alone or
    among others gives the same numbers (a stop once every voxel of the batch had converged
    made them depend on the batch).
    """
    rng = np.random.default_rng(8)
    k, m, nv = 11, 5, 60
    n1, n2 = _studies(rng, k)
    g = rng.normal(0.2, 0.4, (m, k, nv)) * rng.uniform(0.2, 2.5, (1, 1, nv))
    batch = egger_test(g, n1, n2)
    for j in range(0, nv, 7):
        alone = egger_test(g[:, :, [j]], n1, n2)
        for key in ("b", "var", "p"):
            assert alone[key][0] == pytest.approx(batch[key][j], rel=1e-12, abs=1e-15)


def test_hedges_g_variance_is_unbiased_for_the_exact_variance():
    """``E v(g) = Var(g)`` with ``g = J t sqrt(s2)``, ``t`` noncentral t (Hedges 1981), from
    scipy's noncentral-t moments.
    """
    for n1, n2, delta in ((12, np.nan, 0.4), (25, 30, -0.8), (8, 9, 1.5), (200, np.nan, 0.1)):
        k1, k2 = variance_coefficients(np.array([n1]), np.array([n2]))
        df = n1 - 1 if np.isnan(n2) else n1 + n2 - 2
        j = hedges_j(df)
        t = stats.nct(df, delta / np.sqrt(k1[0]))
        e_g2 = j * j * k1[0] * (t.var() + t.mean() ** 2)
        var_g = j * j * k1[0] * t.var()
        assert k1[0] + k2[0] * e_g2 == pytest.approx(var_g, rel=1e-9)
        assert j * np.sqrt(k1[0]) * t.mean() == pytest.approx(delta, rel=1e-9)  # g unbiased


def test_one_hedges_g_variance():
    """Every module that needs the variance uses the core's."""
    from analysis.sdm.inference.permutation import PSIInputs

    assert effect_sizes.g_variance.__module__ == "analysis.sdm.statistics.hedges"
    assert metansue_mle.variance_coefficients.__module__ == "analysis.sdm.statistics.hedges"
    rng = np.random.default_rng(3)
    n1, n2 = _studies(rng, 6)
    space = type("S", (), {"n_voxels": 4})()
    inp = PSIInputs(np.zeros((2, 6, 4), np.float32), n1, n2, space)
    for a, b in zip(inp.variance_coefficients(), variance_coefficients(n1, n2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_hypothesis_row():
    np.testing.assert_array_equal(hypothesis_row(None, 3), [1, 0, 0])
    np.testing.assert_array_equal(hypothesis_row("0+1+0", 3), [0, 1, 0])
    np.testing.assert_array_equal(hypothesis_row([0, 0, 1], 3), [0, 0, 1])
    with pytest.raises(ValueError, match="2 entries but the design has 3 columns"):
        hypothesis_row("0+1", 3)


def test_rubin_pool_by_hand():
    est = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    var = np.array([[0.5, 1.0], [0.5, 2.0], [0.5, 3.0]])
    mean, total = rubin_pool(est, var)
    np.testing.assert_allclose(mean, [2.0, 0.0])
    np.testing.assert_allclose(total, [0.5 + (1 + 1 / 3) * 1.0, 2.0])
    mean1, total1 = rubin_pool(est[:1], var[:1])  # one imputation: no between term
    np.testing.assert_array_equal(total1, var[0])


def test_columns_round_trip():
    a = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    flat, shape = to_columns(a)
    assert flat.shape == (3, 8) and shape == (2, 4)
    np.testing.assert_array_equal(flat[:, 4:], a[1])


# --------------------------------------------------------------------------------------------
# the compiled kernels against the core
def _design_of(kind, rng, k):
    """Design and hypothesis of a compiled kernel: ``mean``, ``slope`` or ``design`` (the
    general kernel: an intercept, two numeric covariates and a dummy-coded one, hypothesis on
    the intercept and a slope).
    """
    if kind == "mean":
        return np.ones((k, 1)), hypothesis_row(None, 1)
    if kind == "slope":
        return np.c_[np.ones(k), rng.normal(size=k)], hypothesis_row([0.3, 1.0], 2)
    X = np.c_[np.ones(k), rng.normal(size=(k, 2)), (np.arange(k) % 3 == 0)]
    return X, hypothesis_row([1.0, 0.0, 0.5, 0.0], 4)


@pytest.mark.parametrize("design", ["mean", "slope", "design"])
@pytest.mark.parametrize("method", ["dl", "reml"])
def test_estimator_kernels_match_the_core(design, method):
    """``_mean_kernel`` / ``_slope_kernel`` / ``_design_kernel`` (the estimator's and the
    identity permutation's fit) against the core: coefficient, Rubin variance, tau2, I2 and
    pooled Q.
    """
    rng = np.random.default_rng({"mean": 4, "slope": 5, "design": 11}[design])
    k, m, nv = 9, 4, 300
    n1, n2 = _studies(rng, k)
    k1, k2 = variance_coefficients(n1, n2)
    G = (rng.normal(0.2, 0.3, (m, k, nv)) * rng.uniform(0.2, 2.5, (1, 1, nv))).astype(np.float32)
    X, C = _design_of(design, rng, k)
    assert compiled_design(X, C) == design
    kw = {"max_iter": 200, "tol": 1e-13} if method == "reml" else {}
    ours = pooled_fit(G, k1, k2, X, C, heterogeneity=method, **kw)
    core = _core_pooled(G, k1, k2, X, C, method, **kw)
    tight = 1e-10 if method == "dl" else 1e-7
    for key in ("g", "var", "tau2", "i2"):
        np.testing.assert_allclose(ours[key], core[key], rtol=tight, atol=tight * 1e-2,
                                   err_msg=key)
    np.testing.assert_allclose(ours["q"], core["q"], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours["q_p"], core["q_p"], rtol=1e-7, atol=1e-12)
    assert (core["tau2"] > 0).mean() > 0.2 and (core["tau2"] == 0).any()


@pytest.mark.parametrize("mode", [0, 1])
def test_design_kernel_permutation_modes_match_the_core(mode):
    """``_design_kernel`` fed like the permutation test: subject permutation (``mode`` 0,
    ``y = A + c G_j``) or Freedman-Lane (``mode`` 1, ``y = fit_j + res_j[order]``), DerSimonian-
    Laird and REML.
    """
    rng = np.random.default_rng(13 + mode)
    k, m, nv = 11, 3, 90
    n1, n2 = _studies(rng, k)
    k1, k2 = variance_coefficients(n1, n2)
    X, C = _design_of("design", rng, k)
    P2 = rng.normal(0.2, 0.3, (m, k, nv)).astype(np.float32)
    if mode == 0:
        P1 = rng.normal(0, 0.2, (1, k, nv)).astype(np.float32)
        c, order = rng.uniform(-1, 1, k), None
        Y = P1.astype(np.float64) + c[None, :, None] * P2.astype(np.float64)
    else:
        P1 = rng.normal(0.1, 0.2, (m, k, nv)).astype(np.float32)
        c, order = None, rng.permutation(k)
        Y = (P1 + P2[:, order]).astype(np.float64)  # the kernels add the two in float32
    for method, kw in (("dl", {}), ("reml", {"max_iter": 200, "tol": 1e-13})):
        out = run_kernel("design", P2, k1, k2, X, C, n_iter=kw.get("max_iter", 0),
                         tol=kw.get("tol", 0.0), stats=False, A=P1, c=c, order=order, mode=mode)
        core = _core_pooled(Y, k1, k2, X, C, method, **kw)
        np.testing.assert_allclose(out[0], core["g"], rtol=1e-8, atol=1e-11, err_msg=method)
        np.testing.assert_allclose(out[1], core["var"], rtol=1e-8, err_msg=method)
        np.testing.assert_allclose(out[2], core["tau2"], rtol=1e-7, atol=1e-10, err_msg=method)


def test_design_without_full_rank_gives_nan():
    """Collinear design columns have no fit: the general kernel writes NaN, not a number from
    round-off (as the slope kernel does for a constant covariate).
    """
    rng = np.random.default_rng(17)
    k, m, nv = 8, 2, 20
    n1, n2 = _studies(rng, k)
    k1, k2 = variance_coefficients(n1, n2)
    x = rng.normal(size=k)
    X = np.c_[np.ones(k), x, 2.0 * x]
    G = rng.normal(0.2, 0.3, (m, k, nv)).astype(np.float32)
    out = pooled_fit(G, k1, k2, X, [1.0, 0.0, 0.0])
    assert all(np.isnan(out[key]).all() for key in ("g", "var", "z", "tau2"))
    out = run_kernel("design", G, k1, k2, X, [1.0, 0.0, 0.0], n_iter=5, tol=0.0, stats=True)
    assert np.isnan(out).all()
    fine = run_kernel("design", G, k1, k2, X[:, :2].copy(), [1.0, 0.0], n_iter=0, tol=0.0,
                      stats=True)
    assert np.isfinite(fine).all()


def test_permutation_mean_kernel_matches_the_core():
    """``_perm_mean_kernel`` (voxel-blocked, double precision): ``y = A + c G_j``, DerSimonian-
    Laird, Rubin's rules.
    """
    rng = np.random.default_rng(6)
    k, m, nv = 8, 5, 150
    n1, n2 = _studies(rng, k)
    k1, k2 = variance_coefficients(n1, n2)
    G = rng.normal(0.2, 0.3, (m, k, nv)).astype(np.float32)
    Gb = blocked_layout(G)
    A = np.zeros((k, Gb.shape[0] * Gb.shape[3]), np.float32)
    A[:, :nv] = rng.normal(0, 0.2, (k, nv))
    c = rng.uniform(-1, 1, k)
    out = permuted_mean(A, c, Gb, k1, k2, nv, precision="double")
    Y = A[None, :, :nv].astype(np.float64) + c[None, :, None] * G.astype(np.float64)
    core = _core_pooled(Y, k1, k2, None, np.ones(1), "dl")
    np.testing.assert_allclose(out[0], core["g"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out[1], core["var"], rtol=1e-10)
    single = permuted_mean(A, c, Gb, k1, k2, nv, precision="single")
    np.testing.assert_allclose(single[0] / np.sqrt(single[1]), core["g"] / np.sqrt(core["var"]),
                               atol=1e-4)


@pytest.mark.parametrize("mode", [0, 1])
def test_permutation_slope_kernel_matches_the_core(mode):
    """``_perm_slope_kernel`` (double precision): a subject permutation (``mode`` 0,
    ``y = A + c G_j``) or Freedman-Lane (``mode`` 1, ``y = fit_j + res_j[order]``).
    """
    rng = np.random.default_rng(7 + mode)
    k, m, nv = 10, 4, 120
    n1, n2 = _studies(rng, k)
    k1, k2 = variance_coefficients(n1, n2)
    X = np.c_[np.ones(k), rng.normal(40, 10, k)]  # a raw covariate (the kernel rescales it)
    C = np.array([0.0, 1.0]) if mode else np.array([1.0, 0.5])
    P2 = rng.normal(0.2, 0.3, (m, k, nv)).astype(np.float32)
    P2b = blocked_layout(P2)
    width = P2b.shape[0] * P2b.shape[3]
    if mode == 0:
        A = np.zeros((k, width), np.float32)
        A[:, :nv] = rng.normal(0, 0.2, (k, nv))
        c = rng.uniform(-1, 1, k)
        out = permuted_slope(A, P2b, X, C, k1, k2, nv, c=c, mode=0, precision="double")
        Y = A[None, :, :nv].astype(np.float64) + c[None, :, None] * P2.astype(np.float64)
    else:
        P1 = rng.normal(0.1, 0.2, (m, k, nv)).astype(np.float32)
        order = rng.permutation(k)
        out = permuted_slope(blocked_layout(P1), P2b, X, C, k1, k2, nv, order=order, mode=1,
                             precision="double")
        Y = P1.astype(np.float64) + P2.astype(np.float64)[:, order]
    core = _core_pooled(Y, k1, k2, X, C, "dl")
    np.testing.assert_allclose(out[0], core["g"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out[1], core["var"], rtol=1e-9)
