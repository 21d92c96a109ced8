"""DerSimonian-Laird is SDM-PSI's voxel-wise heterogeneity estimator; one fit serves all paths.

Reference: SDM-PSI's own ``extract`` output at one voxel of Li et al. (2023) (mirrored dataset
``validation/li2023_sdm_extract``): 135 one-sample studies x 50 imputations, every imputed study
g and its variance, and SDM's pooled header of the linear model "intercept +
Adult_minus_ChildOlder" with the hypothesis on the slope (df = k - 2). The covariate is coded by
study label: +1 where the label contains ``_adults``, -1 otherwise (``_children``, ``_olders``,
``_middleolders``, and the ``_g1``/``_g2`` splits take their group's code).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.sdm.estimator import SDMPSI, analyse_imputations
from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.random_effects import fit_random_effects
from analysis.sdm.statistics.re_kernels import pooled_fit
from analysis.sdm.statistics.rubin import pool_fits

#: SDM's printed header (6 decimals): beta0 (at the covariate mean), slope g, its variance and z,
#: tau2, H2, I2 (%), Q and the z of Q
SDM = {"beta0": 0.168029, "g": -0.003211, "var": 0.000597, "z": -0.131442, "tau2": 0.003329,
       "h2": 1.081229, "i2": 7.512618, "q": 114.167793}


@pytest.fixture(scope="module")
def extract(mirror):
    from analysis.fetch import fetch_file
    from analysis.sdm.diagnostics.voxel import read_sdm_extract

    li = read_sdm_extract(fetch_file("validation/li2023_sdm_extract/extract_34_4_52.txt",
                                     download=False))
    x = np.array([1.0 if "_adults" in s else -1.0 for s in li.studies])
    return li.studies, li.y, li.v, x


def _fit(y, v, x, method):
    X = np.c_[np.ones(len(x)), x - x.mean()]  # centred, as SDMPSI's design_matrix
    fits = fit_random_effects(y[:, :, None], v[:, :, None], X, C=[0, 1], method=method,
                              max_iter=500, tol=1e-12)
    pooled = pool_fits(fits, [0, 1])
    beta0 = float(fits["beta"][:, 0, 0].mean())
    return pooled, beta0


def test_extract_shape(extract):
    names, y, v, x = extract
    assert y.shape == (50, 135) and v.shape == y.shape
    assert int((x > 0).sum()) == 89


def test_dersimonian_laird_reproduces_sdm_psi(extract):
    """Every printed number of SDM's header, from its own imputed effects, at its precision."""
    _, y, v, x = extract
    p, beta0 = _fit(y, v, x, "dl")
    assert beta0 == pytest.approx(SDM["beta0"], abs=5e-7)  # intercept at the covariate mean
    assert p["g"][0] == pytest.approx(SDM["g"], abs=5e-7)
    assert p["var"][0] == pytest.approx(SDM["var"], abs=5e-7)
    assert p["z"][0] == pytest.approx(SDM["z"], abs=1e-4)  # measured 9e-7
    assert p["tau2"][0] == pytest.approx(SDM["tau2"], abs=5e-7)
    assert p["h2"][0] == pytest.approx(SDM["h2"], abs=5e-7)
    assert 100 * p["i2"][0] == pytest.approx(SDM["i2"], abs=5e-6)
    assert p["q"][0] == pytest.approx(SDM["q"], rel=1e-4)  # measured 4.5e-5 relative


def test_reml_does_not_reproduce_sdm_psi(extract):
    """REML (SDM's AccurateHeterogeneity=true) gives other numbers: the test can tell them."""
    _, y, v, x = extract
    p, _ = _fit(y, v, x, "reml")
    assert abs(p["tau2"][0] - SDM["tau2"]) > 1e-4
    assert abs(p["z"][0] - SDM["z"]) > 1e-3


def test_uncentred_intercept_is_not_sdms(extract):
    _, y, v, x = extract
    X = np.c_[np.ones(len(x)), x]
    fits = fit_random_effects(y[:, :, None], v[:, :, None], X, C=[1, 0])
    assert abs(fits["beta"][:, 0, 0].mean() - SDM["beta0"]) > 5e-4


def test_compiled_fit_reproduces_sdm_psi(extract):
    """The compiled kernel of the estimator and the permutation test, same numbers.

    The kernels take ``v = k1 + k2 g^2``: the per-study coefficients are recovered exactly from
    SDM's 50 (g, v) pairs of each study (a straight line in g^2).
    """
    _, y, v, x = extract
    g2 = y ** 2
    k2 = ((g2 - g2.mean(0)) * (v - v.mean(0))).sum(0) / ((g2 - g2.mean(0)) ** 2).sum(0)
    k1 = v.mean(0) - k2 * g2.mean(0)
    assert np.abs(k1 + k2 * g2 - v).max() < 2e-6  # SDM prints 6 decimals
    X = np.c_[np.ones(len(x)), x - x.mean()]
    p = pooled_fit(y[:, :, None].astype(np.float32), k1, k2, X, [0, 1], heterogeneity="dl")
    assert p["z"][0] == pytest.approx(SDM["z"], abs=1e-4)
    assert p["tau2"][0] == pytest.approx(SDM["tau2"], abs=2e-6)
    assert 100 * p["i2"][0] == pytest.approx(SDM["i2"], abs=1e-3)
    assert p["q"][0] == pytest.approx(SDM["q"], rel=1e-4)


@pytest.mark.parametrize("heterogeneity", ["dl", "reml"])
@pytest.mark.parametrize("design", ["mean", "slope", "general"])
def test_compiled_and_numpy_fits_agree(rng, heterogeneity, design):
    m, k, nv = 6, 12, 40
    n1 = rng.integers(10, 40, k).astype(float)
    y = (0.2 + rng.normal(0, 0.4, (m, k, nv))).astype(np.float32)
    cols = {"mean": 0, "slope": 1, "general": 2}[design]
    X = np.c_[np.ones(k), rng.normal(size=(k, cols))]
    C = np.eye(X.shape[1])[min(1, cols)]
    out = analyse_imputations(y, n1, None, X, C, heterogeneity=heterogeneity, max_iter=200,
                              tol=1e-12)
    k1, k2 = variance_coefficients(n1)
    yd = y.astype(float)
    ref = pool_fits(fit_random_effects(yd, k1[:, None] + k2[:, None] * yd ** 2, X, C,
                                       method=heterogeneity, max_iter=200, tol=1e-12), C)
    for key in ("g", "var", "z", "tau2", "i2", "h2", "q"):
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-6, atol=1e-9, err_msg=key)
    assert out["df"] == k - X.shape[1]


def test_dl_closed_form_per_voxel(rng):
    """tau2 = max(0, (Q - df) / tr P_FE) written out for one voxel of a meta-regression."""
    k = 9
    y = rng.normal(0.3, 0.5, k)
    v = rng.uniform(0.02, 0.2, k)
    X = np.c_[np.ones(k), rng.normal(size=k)]
    W = np.diag(1 / v)
    P = W - W @ X @ np.linalg.inv(X.T @ W @ X) @ X.T @ W
    tau2 = max(0.0, (y @ P @ y - (k - 2)) / np.trace(P))
    fit = fit_random_effects(y[:, None], v[:, None], X)
    assert fit["tau2"][0] == pytest.approx(tau2, rel=1e-12)
    assert fit["Q"][0] == pytest.approx(y @ P @ y, rel=1e-12)
    assert stats.chi2.sf(fit["Q"][0], k - 2) > 0


def test_permutation_identity_equals_estimator_exactly(rng):
    """The unpermuted z of the PSI test is the estimator's z, bit for bit (mean and slope)."""
    import nibabel as nib

    from analysis.sdm.inference.permutation import psi_permutation_test
    from analysis.sdm.maps.space import MaskSpace, grid_affine

    data = np.zeros((91, 109, 91), np.uint8)
    data[40:48, 50:58, 40:46] = 1
    space = MaskSpace(nib.Nifti1Image(data, grid_affine()))
    k, nv = 7, space.n_voxels
    n1 = rng.integers(10, 30, k).astype(float)
    lower = rng.normal(-0.4, 0.1, (k, nv)).astype(np.float32)
    upper = (lower + rng.uniform(0, 0.8, (k, nv))).astype(np.float32)
    x = rng.normal(size=k)
    for X, hyp in ((None, None), (np.c_[np.ones(k), x], [1, 0]), (np.c_[np.ones(k), x], [0, 1])):
        est = SDMPSI(imputations=4, seed=3, hypothesis=hyp)
        res = est.fit_bounds(lower, upper, n1, None, space, X=X)
        perm = psi_permutation_test(res, n_permutations=3, seed=5, backend="numba")
        assert perm.info["heterogeneity"] == "dl"
        np.testing.assert_array_equal(perm.maps["z"].astype(np.float32), res.maps["z"])
