"""Per-voxel statistics of the SDM engine: REML, MetaNSUE MLE/imputation, Rubin, Egger.

Checked against independent implementations (PyMARE, statsmodels, scipy.optimize /
scipy.integrate, scipy.stats.truncnorm) and against the per-voxel reference implementation
(:mod:`sdm_reference`). Tolerances are stated at each assertion.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import sdm_reference as ref
from scipy import integrate, stats

from analysis.sdm.diagnostics.egger import egger_test
from analysis.sdm.statistics.effect_sizes import g_from_t
from analysis.sdm.statistics.hedges import g_variance
from analysis.sdm.statistics.metansue import (
    compiled as mn_compiled,
)
from analysis.sdm.statistics.metansue import (
    imputation as mn_impute,
)
from analysis.sdm.statistics.metansue import (
    mle as mn_mle,
)
from analysis.sdm.statistics.metansue import (
    settings as mn_settings,
)
from analysis.sdm.statistics.pooling import pool_chi2, pool_sqrt_mean
from analysis.sdm.statistics.random_effects import fit_random_effects, q_to_z, reml_tau2
from analysis.sdm.statistics.rubin import pool_cov, pool_fits, pool_scalar


def _random_meta(rng, k=12, nv=6):
    y = rng.normal(0.3, 0.4, (k, nv))
    v = rng.uniform(0.02, 0.2, (k, nv))
    return y, v


def _random_bounds(rng, k=11, nv=60, known_frac=0.1):
    """Bounds shaped like SDM's: far field +-g_thr, pulled towards a peak g by a kernel K."""
    n1 = rng.integers(10, 40, k).astype(float)
    n2 = np.full(k, np.nan)
    gthr = g_from_t(3.2, n1)[:, None]
    K = np.clip(rng.uniform(-1, 1, (k, nv)), 0, 1)
    gp = g_from_t(rng.uniform(3.2, 8, (k, 1)) * rng.choice([1, 1, 1, -1], (k, 1)), n1[:, None])
    a = -gthr + K * (gp + gthr)
    b = gthr + K * (gp - gthr)
    lo, up = np.minimum(a, b), np.maximum(a, b)
    up = np.where(rng.random((k, nv)) < known_frac, lo, up)
    return lo, up, n1, n2


# ----------------------------------------------------------------------------- random effects
@pytest.mark.parametrize("with_cov", [False, True])
def test_reml_matches_pymare(rng, with_cov):
    from pymare import Dataset
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    y, v = _random_meta(rng)
    X = np.c_[np.ones(len(y)), rng.normal(size=len(y))] if with_cov else None
    fit = fit_random_effects(y, v, X, max_iter=500, tol=1e-12, method="reml")
    for j in range(y.shape[1]):
        ds = Dataset(y=y[:, j], v=v[:, j], X=None if X is None else X[:, 1:], add_intercept=True)
        est = VarianceBasedLikelihoodEstimator(method="REML").fit_dataset(ds)
        # PyMARE maximises numerically: agreement to 1e-6 absolute on tau2, 1e-6 on beta
        assert fit["tau2"][j] == pytest.approx(float(est.params_["tau2"].ravel()[0]), abs=1e-6)
        np.testing.assert_allclose(fit["beta"][j], est.params_["fe_params"].ravel(), atol=1e-6)


@pytest.mark.parametrize("with_cov", [False, True])
def test_dl_matches_pymare(rng, with_cov):
    """DerSimonian-Laird in its meta-regression form (SDM-PSI's default estimator)."""
    from pymare import Dataset
    from pymare.estimators import DerSimonianLaird

    y, v = _random_meta(rng)
    X = np.c_[np.ones(len(y)), rng.normal(size=len(y))] if with_cov else None
    fit = fit_random_effects(y, v, X)
    for j in range(y.shape[1]):
        ds = Dataset(y=y[:, j], v=v[:, j], X=None if X is None else X[:, 1:], add_intercept=True)
        est = DerSimonianLaird().fit_dataset(ds)
        assert fit["tau2"][j] == pytest.approx(float(est.params_["tau2"].ravel()[0]), abs=1e-12)
        np.testing.assert_allclose(fit["beta"][j], est.params_["fe_params"].ravel(), rtol=1e-10)
    assert np.any(fit["tau2"] > 0) and np.any(fit["tau2"] == 0)


def test_reml_matches_direct_likelihood(rng):
    y, v = _random_meta(rng, k=8, nv=5)
    tau2 = reml_tau2(y, v, max_iter=500, tol=1e-12)
    for j in range(y.shape[1]):
        assert tau2[j] == pytest.approx(ref.reml_voxel(y[:, j], v[:, j]), abs=1e-7)


def test_fixed_effect_q_and_i2_match_statsmodels(rng):
    from statsmodels.stats.meta_analysis import combine_effects

    y, v = _random_meta(rng, k=10, nv=4)
    fit = fit_random_effects(y, v)
    assert fit["df"] == 9
    for j in range(y.shape[1]):
        sm = combine_effects(y[:, j], v[:, j], method_re="dl")
        assert fit["Q"][j] == pytest.approx(sm.q, rel=1e-10)
        # H2 = 1 + tau2 tr(P_fe)/df, with tr(P_fe) = (Q - df)/tau2_DL from statsmodels' DL fit
        if sm.tau2 > 0:
            c = (sm.q - sm.df_resid) / sm.tau2
            h2 = 1 + fit["tau2"][j] * c / 9
            assert fit["H2"][j] == pytest.approx(h2, rel=1e-9)
            assert fit["I2"][j] == pytest.approx(1 - 1 / h2, rel=1e-9)
        # variance of the RE mean = 1 / sum(1/(v + tau2))
        w = 1 / (v[:, j] + fit["tau2"][j])
        assert fit["var"][j] == pytest.approx(1 / w.sum(), rel=1e-12)
        assert fit["coef"][j] == pytest.approx((w * y[:, j]).sum() / w.sum(), rel=1e-12)


def test_fit_batches_over_imputations(rng):
    y = rng.normal(0.2, 0.3, (4, 9, 7))
    v = rng.uniform(0.02, 0.1, (4, 9, 7))
    fit = fit_random_effects(y, v)
    assert fit["coef"].shape == (4, 7) and fit["cov"].shape == (4, 7, 1, 1)
    one = fit_random_effects(y[2], v[2])
    np.testing.assert_allclose(fit["tau2"][2], one["tau2"], atol=1e-12)
    np.testing.assert_allclose(fit["z"][2], one["z"], rtol=1e-12)


def test_q_to_z_matches_definition():
    q = np.array([10.0, 49.0, 80.0])
    np.testing.assert_allclose(q_to_z(q, 49), stats.norm.ppf(stats.chi2.cdf(q, 49)), rtol=1e-7)


# ----------------------------------------------------------------------------- MetaNSUE
def test_leave_n_out_rule():
    # 'auto' = metansue + 1: 50 -> 3 (Enge's MleNLeaveOneOut), 21 -> 2 (JDKENT template)
    assert mn_settings.leave_n_out_count(50) == 3
    assert mn_settings.leave_n_out_count(21) == 2
    assert mn_settings.leave_n_out_count(50, "metansue") == 2
    assert mn_settings.leave_n_out_count(3) == 1
    assert mn_settings.leave_n_out_count(11, 0) == 0


def test_interval_terms_against_integration_and_finite_differences():
    lo, up, s = -0.4, 0.7, 0.3
    for mu in (-2.0, 0.1, 0.9, 3.5):
        f, d1, d2 = mn_mle._interval_terms(np.array([mu]), lo, up, s, s)
        prob = integrate.quad(stats.norm(mu, s).pdf, lo, up, epsabs=1e-14)[0]
        assert f[0] == pytest.approx(-np.log(prob), rel=1e-8)
        h = 1e-5
        fp = mn_mle._interval_terms(np.array([mu + h]), lo, up, s, s, deriv=False)
        fm = mn_mle._interval_terms(np.array([mu - h]), lo, up, s, s, deriv=False)
        assert d1[0] == pytest.approx((fp - fm)[0] / (2 * h), rel=1e-5, abs=1e-7)
        assert d2[0] == pytest.approx((fp - 2 * f + fm)[0] / h**2, rel=1e-3, abs=1e-5)
    # far tail stays finite
    f = mn_mle._interval_terms(np.array([40.0]), lo, up, s, s, deriv=False)
    assert np.isfinite(f[0]) and f[0] > 1000


@pytest.mark.parametrize("with_cov", [False, True])
def test_mle_matches_reference(rng, with_cov):
    lo, up, n1, n2 = _random_bounds(rng, k=9 if with_cov else 11, nv=6 if with_cov else 25)
    X = np.c_[np.ones(len(n1)), rng.normal(size=len(n1))] if with_cov else None
    C = [0.0, 1.0] if with_cov else None
    fast = mn_mle.censored_mle(lo, up, n1, n2, X, C)
    slow = ref.mle_map(lo, up, n1, n2, X, C)
    # scipy's bounded Brent / BFGS vs Newton: 1e-5 on coefficients and tau2
    np.testing.assert_allclose(fast["beta"], slow["beta"], atol=1e-5)
    np.testing.assert_allclose(fast["tau2"], slow["tau2"], atol=1e-5)


def test_mle_compiled_matches_numpy_path(rng):
    lo, up, n1, n2 = _random_bounds(rng, nv=80)
    a = mn_mle.censored_mle(lo, up, n1, n2, compiled=True, method="exact")
    b = mn_mle.censored_mle(lo, up, n1, n2, compiled=False)
    # exact leave-n-out in both (every candidate that can win is refitted); golden section on
    # tau: 1e-5
    np.testing.assert_allclose(a["beta"], b["beta"], atol=1e-6)
    np.testing.assert_allclose(a["tau2"], b["tau2"], atol=1e-5)


@pytest.mark.parametrize("n_cov", [1, 3])
@pytest.mark.parametrize("first", ["grouped", "indicator"])
def test_mle_compiled_design_matches_numpy_path(rng, first, n_cov):
    """Compiled design kernel vs the NumPy path, 11 studies (known and censored), 2 rounds of
    leave-n-out. The first covariate is constant among some studies: 0.5 in studies 0-5
    (``grouped``), or 1 in study 4 and 0 in all others (``indicator``: the refit without
    study 4 has an exactly singular Hessian, so every column goes through the minimum-norm
    fallback). Further covariates are normal; the hypothesis is the last slope (the intercept
    for the indicator alone).

    Measured over seeds 0-5 (200 columns each): |d beta| <= 8e-13 and |d tau2| <= 5e-8 where
    the kept studies' design has full rank; ``discarded`` differed at <= 3 columns of 200, all
    exact ties (two identical studies, or ``C' beta`` = 0 to rounding) with equal beta. Where the
    indicator study is discarded its coefficient is not identified: both paths keep its one-step
    start, dominated there by rounding (|d beta| up to 6e-2, |d tau2| up to 3e-4, the discarded
    study's mu entering tau2), while ``C' beta`` and the kept studies' mu agree to <= 2e-13.
    """
    lo, up, n1, n2 = _random_bounds(rng, nv=200, known_frac=0.15)
    k, nv = lo.shape
    if first == "indicator":
        x1 = (np.arange(k) == 4).astype(float)
    else:
        x1 = np.r_[np.full(6, 0.5), rng.normal(size=k - 6)]
    X = np.column_stack([np.ones(k), x1] + [rng.normal(size=k) for _ in range(n_cov - 1)])
    C = np.eye(n_cov + 1)[0 if first == "indicator" and n_cov == 1 else n_cov]
    a = mn_mle.censored_mle(lo, up, n1, n2, X, C, compiled=True, method="exact")
    b = mn_mle.censored_mle(lo, up, n1, n2, X, C, compiled=False)
    assert a["n_leave_out"] == 2
    same = (a["discarded"] == b["discarded"]).all(0)
    assert same.mean() >= 0.97
    kept = np.ones((k, nv), dtype=bool)
    for row in b["discarded"]:
        kept[row, np.arange(nv)] = False
    flat = ~kept[4] if first == "indicator" else np.zeros(nv, dtype=bool)
    if first == "indicator":
        assert 0 < flat.sum() < nv
    ok = ~flat
    np.testing.assert_allclose(a["beta"][ok], b["beta"][ok], rtol=0, atol=1e-10)
    np.testing.assert_allclose(a["tau2"][ok], b["tau2"][ok], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a["beta"] @ C, b["beta"] @ C, rtol=0, atol=1e-10)
    dmu = X @ (a["beta"] - b["beta"]).T
    np.testing.assert_allclose(dmu[kept & same[None]], 0.0, atol=1e-10)


@pytest.mark.parametrize("n_cov", [0, 2])
def test_fast_mle_within_bounds_of_exact(rng, n_cov):
    """``method="fast"`` (Brent's tau2 search, pruned leave-n-out candidates) vs ``"exact"`` on
    simulated SDM-like bounds, 40 studies (3 leave-n-out rounds), 400 voxels: the MLE itself,
    then z after 50 imputations and Rubin's rules against the acceptance bounds of the fast
    path (r(z) >= 0.9999, max |dz| <= 0.05).
    """
    from analysis.sdm.estimator import SDMPSI
    from analysis.sdm.maps.space import MaskSpace

    lo, up, n1, n2 = _random_bounds(rng, k=40, nv=400, known_frac=0.1)
    k = lo.shape[0]
    X = (np.column_stack([np.ones(k)] + [rng.normal(size=k) for _ in range(n_cov)])
         if n_cov else None)
    exact = mn_mle.censored_mle(lo, up, n1, n2, X, method="exact")
    fast = mn_mle.censored_mle(lo, up, n1, n2, X, method="fast")
    assert exact["n_leave_out"] == fast["n_leave_out"] == 3
    # Brent to 1e-6 on tau vs 24-28 golden-section steps, whose own resolution is about 1e-5
    # relative on tau: 5e-5 on tau2
    same = (exact["discarded"] == fast["discarded"]).all(0)
    np.testing.assert_allclose(fast["tau2"][same], exact["tau2"][same], rtol=5e-5, atol=1e-7)
    np.testing.assert_allclose(fast["beta"][same], exact["beta"][same], atol=1e-9)
    assert same.mean() >= 0.97
    with pytest.raises(ValueError, match="method"):
        mn_mle.censored_mle(lo, up, n1, n2, method="approximate")
    shape = (20, 20, 1)
    space = MaskSpace(nib.Nifti1Image(np.ones(shape, np.uint8), np.diag([-2.0, 2, 2, 1])))
    z = [SDMPSI(imputations=50, seed=3, keep_imputations=False, mle_method=m)
         .fit_bounds(lo, up, n1, n2, space, X=X).maps["z"].astype(float)
         for m in ("exact", "fast")]
    assert np.corrcoef(z[0], z[1])[0, 1] >= 0.9999
    assert np.abs(z[0] - z[1]).max() <= 0.05


@pytest.mark.parametrize("n_cov", [0, 1])
def test_fast_mle_stops_at_hypothesis_tolerance(rng, n_cov):
    """150 studies (9 leave-n-out rounds) whose bounds mostly straddle 0 (a peak near the voxel
    in 10 % of them), as in large peak-only meta-analyses: many removals bring ``C' beta`` to 0
    equally well, and the fast path ends a round's search once a refit is within ``MU_ZTOL``
    standard errors of 0 instead of refitting nearly every study. The coefficients equal the
    exact search's (the discarded studies may differ: near-ties).
    """
    k, nv = 150, 120
    n1 = rng.integers(10, 40, k).astype(float)
    n2 = np.full(k, np.nan)
    gthr = g_from_t(3.2, n1)[:, None]
    K = np.where(rng.random((k, nv)) < 0.1, rng.uniform(0, 1, (k, nv)), 0.0)
    gp = g_from_t(rng.uniform(3.2, 8, (k, 1)) * rng.choice([1, -1], (k, 1)), n1[:, None])
    a, b = -gthr + K * (gp + gthr), gthr + K * (gp - gthr)
    lo, up = np.minimum(a, b), np.maximum(a, b)
    X = np.column_stack([np.ones(k), rng.normal(size=k)]) if n_cov else None
    exact = mn_mle.censored_mle(lo, up, n1, n2, X, method="exact", compress=False)
    fast = mn_mle.censored_mle(lo, up, n1, n2, X, method="fast", compress=False)
    assert exact["n_leave_out"] == fast["n_leave_out"] == 9
    np.testing.assert_allclose(fast["beta"], exact["beta"], rtol=0, atol=1e-9)
    # the regime in question: the hypothesis brought (nearly) to 0 at most voxels
    assert np.mean(np.abs(exact["beta"][:, 0]) < 1e-3) >= 0.5


def _tau2_args(lo, up, k1, k2, mean):
    """Arguments ``(mu, y, known, lo, up, v, v_lo, v_up)`` of the compiled tau2 objective for
    one voxel's bounds, every study's mean ``mean``."""
    known = np.abs(up - lo) < mn_settings.KNOWN_TOL
    y = np.where(known, 0.5 * (lo + up), 0.0)
    v = np.where(known, k1 + k2 * y * y, 1.0)
    return (np.full(lo.shape, mean), y, known, lo, up, v, k1 + k2 * lo * lo, k1 + k2 * up * up)


def test_tau2_slope_at_zero_matches_finite_difference(rng):
    """``_tau2_slope0`` (the derivative of the tau2 objective at tau2 = 0) equals the difference
    quotient of ``_tau2_f`` over ``[0, 2e-7]``, for censored and known studies."""
    lo, up, n1, n2 = _random_bounds(rng, k=11, nv=20, known_frac=0.3)
    k1, k2 = mn_mle.variance_coefficients(n1, n2)
    h = 1e-7
    for col in range(lo.shape[1]):
        args = _tau2_args(lo[:, col].copy(), up[:, col].copy(), k1, k2, rng.normal(0.0, 0.2))
        slope = mn_compiled._tau2_slope0(*args)
        fd = (mn_compiled._tau2_f(2 * h, *args) - mn_compiled._tau2_f(0.0, *args)) / (2 * h)
        assert slope == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_tau2_nondecreasing_implies_the_optimum_at_zero(rng):
    """Where ``_tau2_nondecreasing`` holds, the tau2 objective never decreases on a fine grid of
    tau2 (so 0 is its global optimum); it fails once a censored interval excludes the mean or a
    known study lies farther than its standard error from it."""
    lo, up, n1, n2 = _random_bounds(rng, k=11, nv=200, known_frac=0.2)
    # half the voxels far from every peak: intervals around 0, a few known effects near 0
    half = rng.uniform(0.05, 0.5, (11, 100))
    lo[:, :100], up[:, :100] = -half, half * rng.uniform(0.5, 1.5, (11, 100))
    lo[:2, :100] = up[:2, :100] = rng.normal(0.0, 0.2, (2, 100))
    k1, k2 = mn_mle.variance_coefficients(n1, n2)
    grid = np.r_[0.0, np.geomspace(1e-8, 50.0, 400)]
    n_true = 0
    for col in range(lo.shape[1]):
        args = _tau2_args(lo[:, col].copy(), up[:, col].copy(), k1, k2, rng.normal(0.0, 0.1))
        mu, y, known, lo_c, up_c, v = args[:6]
        holds = mn_compiled._tau2_nondecreasing(*args[:6])
        inside = np.where(known, (y - mu) ** 2 <= v, (lo_c <= mu) & (mu <= up_c))
        assert holds == inside.all()
        if holds:
            n_true += 1
            f = [mn_compiled._tau2_f(t, *args) for t in grid]
            assert np.all(np.diff(f) >= -1e-12)
    assert n_true >= 5


def test_fast_tau2_search_returns_the_boundary_optimum_exactly(rng):
    """Where tau = 0 is the grid's best point and the objective rises as tau2 leaves 0 (every
    study censored on an interval around the common mean, the usual case far from the peaks),
    the fast path returns tau2 = 0 itself, equal to the exact path's optimum to its own
    resolution, instead of Brent's approach to the boundary."""
    k, nv = 11, 50
    n1 = rng.integers(10, 40, k).astype(float)
    gthr = g_from_t(3.2, n1)[:, None]
    lo = -gthr * rng.uniform(0.8, 1.0, (k, nv))
    up = gthr * rng.uniform(0.8, 1.0, (k, nv))
    fast = mn_mle.censored_mle(lo, up, n1, None, method="fast")
    exact = mn_mle.censored_mle(lo, up, n1, None, method="exact")
    assert (fast["tau2"] == 0.0).all()
    np.testing.assert_allclose(exact["tau2"], 0.0, atol=1e-9)
    np.testing.assert_array_equal(fast["beta"], exact["beta"])


def test_mle_reports_progress_per_block(rng, caplog):
    """Both kernels run in blocks of ``chunk`` distinct bound patterns and log their progress
    (no terminal under pytest: log lines of :mod:`analysis.sdm.progress`)."""
    import logging

    lo, up, n1, n2 = _random_bounds(rng, nv=40)
    X = np.c_[np.ones(len(n1)), rng.normal(size=len(n1))]
    for design in (None, X):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            whole = mn_mle.censored_mle(lo, up, n1, n2, design)
            blocks = mn_mle.censored_mle(lo, up, n1, n2, design, chunk=10, progress=True)
        lines = [r.getMessage() for r in caplog.records if "MetaNSUE MLE" in r.getMessage()]
        assert any("4/4" in line for line in lines), lines
        np.testing.assert_array_equal(whole["beta"], blocks["beta"])
        np.testing.assert_array_equal(whole["tau2"], blocks["tau2"])


def test_small_solver_falls_back_to_minimum_norm():
    p = 3
    M = np.empty((p, 2 * p))
    out = np.empty((p, 1))
    A = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    B = np.array([[1.0], [-2.0], [0.5]])
    assert mn_compiled._solve_small(A, B, out, M)
    np.testing.assert_allclose(out, np.linalg.solve(A, B), rtol=1e-13)
    # a covariate constant (0) among the active studies: a zero row and column plus the ridge
    S = np.array([[4.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]]) + 1e-12 * np.eye(p)
    B = np.array([[1.0], [0.0], [0.5]])
    assert not mn_compiled._solve_small(S, B, out, M)
    np.testing.assert_allclose(out, np.linalg.pinv(S - 1e-12 * np.eye(p)) @ B, rtol=1e-12)
    assert out[1, 0] == 0.0


def test_mle_all_known_is_weighted_mean(rng):
    k, nv = 7, 5
    n1 = rng.integers(10, 30, k).astype(float)
    g = rng.normal(0.4, 0.2, (k, nv))
    res = mn_mle.censored_mle(g, g, n1, None, leave_n_out=0, compress=False)
    w = 1 / g_variance(g, n1[:, None])
    np.testing.assert_allclose(res["beta"][:, 0], (w * g).sum(0) / w.sum(0), atol=1e-9)


def test_mle_compression_is_exact(rng):
    lo, up, n1, n2 = _random_bounds(rng, nv=20)
    lo = np.repeat(lo, 3, axis=1)
    up = np.repeat(up, 3, axis=1)
    a = mn_mle.censored_mle(lo, up, n1, n2, compress=True)
    b = mn_mle.censored_mle(lo, up, n1, n2, compress=False)
    np.testing.assert_allclose(a["beta"], b["beta"], atol=1e-12)
    np.testing.assert_allclose(a["tau2"], b["tau2"], atol=1e-12)


def test_distinct_columns_match_numpy_unique(rng, monkeypatch):
    """The hashed search finds np.unique's patterns; -0.0 and 0.0 stay apart (bit patterns);
    columns that differ but share a hash are told apart (the fallback, forced here by a hash
    that maps every column to 0)."""
    column_hash = mn_mle._column_hash
    a = rng.choice([-1.5, -0.0, 0.0, 0.25, 2.0], size=(6, 3000)).astype(np.float32)
    ref_patterns = np.unique(a.view(np.uint32).T, axis=0)
    for hashed in (True, False):
        if not hashed:
            monkeypatch.setattr(mn_mle, "_column_hash", lambda w: np.zeros(len(w), np.uint64))
        first, inverse = mn_mle.distinct_columns(a)
        np.testing.assert_array_equal(a[:, first[inverse]].view(np.uint32), a.view(np.uint32))
        assert len(first) == len(ref_patterns) == len(
            np.unique(a[:, first].view(np.uint32).T, axis=0))
    # columns whose words differ by small integers (neighbouring floats), where a weighted
    # sum of the words collides (e.g. w0 + 3 w1), get distinct hashes
    i, j = np.meshgrid(np.arange(100, dtype=np.uint32), np.arange(100, dtype=np.uint32))
    words = np.tile(np.float32(0.37).view(np.uint32), (i.size, 22))
    words[:, 0] += i.ravel()
    words[:, 1] += j.ravel()
    assert len(np.unique(column_hash(words))) == i.size


def test_truncnorm_ppf_matches_scipy(rng):
    u = rng.random(200)
    mean = rng.normal(0, 1, 200)
    sd = rng.uniform(0.1, 1, 200)
    lo = mean + rng.normal(0, 3, 200)
    up = lo + rng.uniform(0.01, 2, 200)
    ours = mn_impute.truncnorm_ppf(u, mean, sd, lo, up)
    a, b = (lo - mean) / sd, (up - mean) / sd
    theirs = stats.truncnorm.ppf(u, a, b, loc=mean, scale=sd)
    ok = np.isfinite(theirs)
    np.testing.assert_allclose(ours[ok], theirs[ok], atol=1e-7 * (up - lo)[ok].max())
    assert np.all((ours >= lo) & (ours <= up))


def _box_space(shape=(14, 12, 10)):
    import nibabel as nib

    from analysis.sdm.maps.space import MaskSpace, grid_affine

    data = np.zeros((91, 109, 91), np.uint8)
    data[30:30 + shape[0], 40:40 + shape[1], 30:30 + shape[2]] = 1
    return MaskSpace(nib.Nifti1Image(data, grid_affine()))


def test_correlated_fields_are_standard_normal_and_smooth():
    space = _box_space()
    f = mn_impute.correlated_fields(np.random.default_rng(1), 400, space, fwhm_mm=20)
    assert f.shape == (400, space.n_voxels) and f.dtype == np.float32
    # per-voxel mean 0 and SD 1 (400 draws: SE of the mean 0.05, of the SD ~0.035)
    assert np.abs(f.mean(0)).max() < 0.25
    assert np.abs(f.std(0) - 1).max() < 0.15
    # neighbours strongly correlated, voxels 26 mm apart much less
    a, b, c = 0, 1, space.n_voxels - 1
    r_near = np.corrcoef(f[:, a], f[:, b])[0, 1]
    r_far = np.corrcoef(f[:, a], f[:, c])[0, 1]
    assert r_near > 0.9
    assert r_far < r_near - 0.3


def test_impute_respects_bounds_and_is_seeded(rng):
    space = _box_space((6, 6, 5))
    k, nv = 5, space.n_voxels
    lo, up, n1, n2 = _random_bounds(rng, k=k, nv=nv)
    mle = mn_mle.censored_mle(lo, up, n1, n2)
    kw = dict(imputations=30, fwhm_mm=20)
    a = mn_impute.impute(lo, up, mle, n1, n2, space, rng=np.random.default_rng(5), **kw)
    b = mn_impute.impute(lo, up, mle, n1, n2, space, rng=np.random.default_rng(5), **kw)
    c = mn_impute.impute(lo, up, mle, n1, n2, space, rng=np.random.default_rng(6), **kw)
    assert a.shape == (30, k, nv) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    tol = 1e-6
    assert np.all(a >= lo.astype(np.float32) - tol) and np.all(a <= up.astype(np.float32) + tol)
    known = np.abs(up - lo) < mn_settings.KNOWN_TOL
    np.testing.assert_array_equal(a[:, known], np.broadcast_to(lo[known].astype(np.float32),
                                                               (30, known.sum())))


def test_impute_draws_follow_the_truncated_normal():
    space = _box_space((3, 3, 3))
    nv = space.n_voxels
    n1 = np.array([20.0])
    lo = np.full((1, nv), -0.7)
    up = np.full((1, nv), 0.6)
    mle = {"X": np.ones((1, 1)), "beta": np.full((nv, 1), 0.2), "tau2": np.full(nv, 0.05)}
    draws = mn_impute.impute(lo, up, mle, n1, None, space, imputations=2000,
                      rng=np.random.default_rng(0), fwhm_mm=20)[:, 0, 0]
    sd = np.sqrt(g_variance(0.2, 20.0) + 0.05)
    a, b = (-0.7 - 0.2) / sd, (0.6 - 0.2) / sd
    ks = stats.kstest(draws, stats.truncnorm(a, b, loc=0.2, scale=sd).cdf)
    assert ks.pvalue > 0.001


# ----------------------------------------------------------------------------- Rubin
def test_pool_scalar_and_cov(rng):
    est = rng.normal(size=(7, 3))
    var = rng.uniform(0.1, 1, (7, 3))
    mean, tot = pool_scalar(est, var)
    np.testing.assert_allclose(mean, est.mean(0))
    np.testing.assert_allclose(tot, var.mean(0) + (1 + 1 / 7) * est.var(0, ddof=1))
    beta = rng.normal(size=(7, 3, 2))
    cov = np.einsum("mvp,mvq->mvpq", beta, beta) + np.eye(2)
    bbar, ctot = pool_cov(beta, cov)
    for v in range(3):
        expect = cov[:, v].mean(0) + (1 + 1 / 7) * np.cov(beta[:, v].T, ddof=1)
        np.testing.assert_allclose(ctot[v], expect, rtol=1e-12)


def test_pool_chi2_d2_formula(rng):
    q = rng.chisquare(9, size=(20, 4))
    out = pool_chi2(q, 9)
    m = 20
    r = (1 + 1 / m) * np.sqrt(q).var(0, ddof=1)
    d2 = (q.mean(0) / 9 - (m + 1) / (m - 1) * r) / (1 + r)
    df2 = (m - 1) / 9 ** (3 / m) * (1 + 1 / r) ** 2
    np.testing.assert_allclose(out["F"], np.maximum(d2, 0))
    np.testing.assert_allclose(out["p"], stats.f.sf(np.maximum(d2, 0), 9, df2))
    np.testing.assert_allclose(stats.chi2.sf(out["Q"], 9), out["p"], rtol=1e-8)
    # identical imputations: Q is the common Q
    same = pool_chi2(np.repeat(q[:1], 5, axis=0), 9)
    np.testing.assert_allclose(same["Q"], q[0], rtol=1e-6)


def test_pool_fits_identical_imputations_equal_single_fit(rng):
    y, v = _random_meta(rng, k=9, nv=5)
    single = fit_random_effects(y, v)
    pooled = pool_fits(fit_random_effects(np.repeat(y[None], 4, 0), np.repeat(v[None], 4, 0)))
    np.testing.assert_allclose(pooled["g"], single["coef"], rtol=1e-10)
    np.testing.assert_allclose(pooled["var"], single["var"], rtol=1e-10)
    np.testing.assert_allclose(pooled["tau2"], single["tau2"], atol=1e-12)
    np.testing.assert_allclose(pooled["i2"], single["I2"], atol=1e-12)
    assert pool_sqrt_mean(np.array([[0.04], [0.16]]))[0] == pytest.approx(0.09)


# ----------------------------------------------------------------------------- Egger
def test_egger_matches_per_voxel_meta_regression(rng):
    k, nv = 10, 3
    n1 = rng.integers(8, 60, k).astype(float)
    g = rng.normal(0.3, 0.3, (k, nv)) + 2.0 / np.sqrt(n1)[:, None]  # planted small-study effect
    imputed = np.repeat(g[None], 3, axis=0)  # identical imputations: Rubin = single fit
    out = egger_test(imputed, n1, None, max_iter=500, tol=1e-12)
    for j in range(nv):
        v = g_variance(g[:, j], n1)
        X = np.c_[np.ones(k), np.sqrt(v)]
        fit = fit_random_effects(g[:, [j]], v[:, None], X, C=[0, 1], max_iter=500, tol=1e-12,
                                 method="reml")
        assert out["b"][j] == pytest.approx(fit["coef"][0], rel=1e-6)
        assert out["z"][j] == pytest.approx(fit["z"][0], rel=1e-5)
    assert np.all((out["p"] > 0) & (out["p"] <= 1))


def test_compiled_inverse_normal_cdf():
    from scipy.special import ndtri

    p = np.r_[np.geomspace(1e-15, 0.5, 200), 1 - np.geomspace(1e-12, 0.5, 200)]
    ours = np.array([mn_impute._ndtri(x) for x in p])
    # Acklam's approximation: relative error < 1.2e-9 (absolute here <= 5e-9)
    np.testing.assert_allclose(ours, ndtri(p), rtol=2e-9, atol=5e-9)
    assert mn_impute._ndtri(0.0) == -np.inf and mn_impute._ndtri(1.0) == np.inf
