"""PSI permutation engine: REML kernel, permutation algebra, back-ends, parallel determinism."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar

from analysis.sdm.backend import array_module, available_backends, check_backend
from analysis.sdm.inference import permutation as P
from analysis.sdm.maps.space import MaskSpace
from analysis.sdm.statistics.hedges import hedges_j


def _space(shape=(14, 14, 12)):
    mask = np.zeros(shape, dtype=bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return MaskSpace(nib.Nifti1Image(mask.astype(np.uint8), np.diag([-2.0, 2, 2, 1])))


@pytest.fixture(scope="module")
def toy():
    """Six studies (three one-sample, three two-sample), five imputations, simulated maps."""
    rng = np.random.default_rng(7)
    space = _space()
    k, m = 6, 5
    n1 = np.array([12, 15, 9, 20, 11, 14], dtype=float)
    n2 = np.array([np.nan, 13, np.nan, 18, np.nan, 10])
    g = 0.25 + 0.25 * rng.standard_normal((m, k, space.n_voxels))
    return P.PSIInputs(g.astype(np.float32), n1, n2, space)


def _reml_bruteforce(y, v, X):
    """REML tau2 of one voxel by bounded 1-D minimisation (independent reference)."""
    def nll(t):
        w = 1.0 / (v + t)
        M = X.T @ (w[:, None] * X)
        beta = np.linalg.solve(M, X.T @ (w * y))
        r = y - X @ beta
        return 0.5 * (np.log(v + t).sum() + np.linalg.slogdet(M)[1] + (w * r * r).sum())

    grid = np.linspace(0, 2, 401)
    t0 = grid[np.argmin([nll(t) for t in grid])]
    res = minimize_scalar(nll, bounds=(max(0.0, t0 - 0.01), t0 + 0.01), method="bounded",
                          options={"xatol": 1e-12})
    return min((res.x, 0.0), key=nll)


@pytest.mark.parametrize("with_covariate", [False, True])
def test_reml_kernel_reaches_the_reml_maximum(with_covariate):
    rng = np.random.default_rng(3)
    k, n = 9, 40
    X = np.c_[np.ones(k), rng.standard_normal(k)] if with_covariate else np.ones((k, 1))
    y = 0.3 + rng.standard_normal((k, n)) * rng.uniform(0.2, 0.7, n)
    v = rng.uniform(0.05, 0.2, (k, n))
    beta, cov, tau2 = P.reml_fixed(y, v, X if with_covariate else None, n_iter=30, tol=1e-12)
    ref = np.array([_reml_bruteforce(y[:, i], v[:, i], X) for i in range(n)])
    assert (ref > 0).sum() > 10  # both interior and boundary solutions are exercised
    np.testing.assert_allclose(tau2, ref, atol=1e-7)
    w = 1.0 / (v + tau2)
    M = np.einsum("kp,kn,kq->npq", X, w, X)
    np.testing.assert_allclose(cov, np.linalg.inv(M), rtol=1e-10)
    np.testing.assert_allclose(beta, np.einsum("npq,nq->np", np.linalg.inv(M),
                                               np.einsum("kp,kn->np", X, w * y)), rtol=1e-10)


def test_rubin_rules_by_hand():
    coef = np.array([[1.0], [2.0], [3.0]])
    var = np.array([[0.5], [0.5], [0.5]])
    cb, tot, z = P.rubin_z(coef, var)
    assert cb[0] == 2.0
    assert tot[0] == pytest.approx(0.5 + (1 + 1 / 3) * 1.0)
    assert z[0] == pytest.approx(2.0 / np.sqrt(0.5 + 4 / 3))


def test_subject_images_are_exactly_standardised(toy):
    subj = P.make_subject_images(toy.n1, toy.n2, toy.space, np.random.default_rng(1), 8.0)
    for i, s in enumerate(subj):
        groups = [slice(0, int(toy.n1[i]))]
        if toy.two_sample[i]:
            groups.append(slice(int(toy.n1[i]), None))
        assert s.shape == (sum(int(x) for x in (toy.n1[i], np.nan_to_num(toy.n2[i]))),
                           toy.space.n_voxels)
        for g in groups:
            np.testing.assert_allclose(s[g].mean(0), 0, atol=1e-5)
            np.testing.assert_allclose(s[g].std(0, ddof=1), 1, atol=1e-5)
    # neighbouring voxels are correlated (smooth subject images)
    nb = np.flatnonzero(toy.space.ijk[:, 0] == toy.space.ijk[0, 0])[:2]
    r = np.corrcoef(subj[3][:, 0], subj[3][:, 1])[0, 1]
    assert r > 0.5 and nb.size == 2


def test_permutation_algebra_matches_explicit_subject_images(toy):
    """g_perm = J (mean of permuted patients - controls) of the imputed subject images."""
    rng = np.random.default_rng(5)
    subj = P.make_subject_images(toy.n1, toy.n2, toy.space, rng, 8.0)
    codes = P.make_codes(toy, 4, rng)
    engine = P._Engine(toy, subj, None, None, 10, 1e-7, "numpy", 512, {})
    j_imp = 2
    jj = hedges_j(np.where(toy.two_sample, toy.n1 + np.nan_to_num(toy.n2) - 2, toy.n1 - 1))
    # identity: the imputed g is recovered exactly
    A, c = engine.study_effects(codes, 0)
    np.testing.assert_allclose(A, 0, atol=2e-6)
    np.testing.assert_allclose(c, 1.0)
    for b in (1, 3):
        A, c = engine.study_effects(codes, b)
        for i in range(len(toy.n1)):
            a = int(toy.n1[i])
            y = subj[i].astype(float).copy()
            y[:a] += toy.imputations[j_imp, i] / jj[i]  # patients (or the one sample)
            w = codes.weights[i][b].astype(float)
            if toy.two_sample[i]:
                pat = w > 0
                assert pat.sum() == a  # a reassignment keeps the group sizes
                explicit = jj[i] * (y[pat].mean(0) - y[~pat].mean(0))
            else:
                signs = np.sign(w)
                explicit = jj[i] * (signs[:, None] * y).mean(0)
            np.testing.assert_allclose(A[i] + c[i] * toy.imputations[j_imp, i], explicit,
                                       atol=2e-5)


def test_codes_do_not_depend_on_the_number_of_permutations(toy):
    short = P.make_codes(toy, 3, np.random.default_rng(1))
    long = P.make_codes(toy, 7, np.random.default_rng(1))
    for ws, wl in zip(short.weights, long.weights, strict=True):
        assert np.array_equal(ws, wl[:3])
    assert np.array_equal(short.c, long.c[:3])
    for i, w in enumerate(long.weights):  # sign flips of 1/n, or group sizes kept
        a = int(toy.n1[i])
        if toy.two_sample[i]:
            assert np.all((w > 0).sum(1) == a)
        else:
            np.testing.assert_allclose(np.abs(w), 1.0 / a)


def test_identity_equals_direct_meta_analysis(toy, tmp_path):
    res = P.psi_permutation_test(toy, n_permutations=3, seed=11, backend="numpy")
    written = res.save(tmp_path, prefix="mod_")
    assert sorted(p.name for p in written) == sorted(
        ["mod_corrp_voxel.nii.gz", "mod_corrp_voxel_neg.nii.gz", "mod_corrp_tfce.nii.gz",
         "mod_corrp_tfce_neg.nii.gz", "mod_maxima.tsv"])
    np.testing.assert_allclose(toy.space.from_img(nib.load(tmp_path / "mod_corrp_tfce.nii.gz")),
                               res.maps["corrp_tfce"], atol=1e-6)
    k1, k2 = toy.variance_coefficients()
    y = toy.imputations.astype(float)
    beta, cov, _ = P.reml_fixed(y, k1[:, None] + k2[:, None] * y * y, None, 0)  # DL
    _, _, z = P.rubin_z(beta[..., 0], cov[..., 0, 0])
    np.testing.assert_allclose(res.maps["z"], z, atol=1e-6)
    assert res.maxima["max_z"].iloc[0] == pytest.approx(z.max())
    assert list(res.maxima.columns) == P.MAXIMA_COLUMNS
    assert res.maxima["permutation"].tolist() == [1, 2, 3]


def test_backends_agree_and_results_are_reproducible(toy):
    a = P.psi_permutation_test(toy, n_permutations=12, seed=2, backend="numpy", chunk_size=5)
    b = P.psi_permutation_test(toy, n_permutations=12, seed=2, backend="numba", chunk_size=3,
                               n_jobs=2, precision="double")
    np.testing.assert_allclose(a.maxima.to_numpy(), b.maxima.to_numpy(), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(a.maps["z"], b.maps["z"], atol=1e-8)
    c = P.psi_permutation_test(toy, n_permutations=12, seed=2, backend="numba", chunk_size=12,
                               precision="double")
    assert np.array_equal(b.maxima.to_numpy(), c.maxima.to_numpy())
    d = P.psi_permutation_test(toy, n_permutations=12, seed=3, backend="numba")
    assert not np.allclose(c.maxima["max_z"].iloc[1:], d.maxima["max_z"].iloc[1:])
    # FWE maps: p of the global maximum counts the permutations reaching it (identity included)
    i = np.argmax(a.maps["z"])
    n_ge = int((a.maxima["max_z"] >= a.maps["z"][i]).sum())
    assert n_ge >= 1
    assert a.maps["p_voxel"][i] == pytest.approx(n_ge / 12)
    assert a.maps["corrp_voxel"][i] == pytest.approx(1 - n_ge / 12)
    assert np.all(np.diff(a.maps["p_voxel"][np.argsort(a.maps["z"])]) <= 0)
    assert np.all((a.maps["p_tfce"] > 0) & (a.maps["p_tfce"] <= 1))


def test_blocked_layout_holds_every_voxel_once():
    from analysis.sdm.statistics.re_kernels import blocked_layout

    G = np.arange(2 * 3 * 70, dtype=np.float32).reshape(2, 3, 70)
    Gb = blocked_layout(G, block=32)
    assert Gb.shape == (3, 2, 3, 32) and Gb.dtype == np.float32
    back = Gb.transpose(1, 2, 0, 3).reshape(2, 3, 96)
    np.testing.assert_array_equal(back[:, :, :70], G)
    np.testing.assert_array_equal(back[:, :, 70:], 0.0)
    np.testing.assert_array_equal(blocked_layout(G[:, :, :64], block=32).transpose(1, 2, 0, 3)
                                  .reshape(2, 3, 64), G[:, :, :64])


def test_voxel_blocked_kernel_agrees_with_the_estimator_kernel(toy):
    """The permutation kernel (voxel-blocked layout) against the estimator's compiled fit of the
    same permuted effects: double precision to rounding, single precision within 1e-6 in z;
    the observed maps and every p map of a test are the same in both precisions."""
    subj = P.make_subject_images(toy.n1, toy.n2, toy.space, P.derive_rng(3, "psi/subject_images"))
    codes = P.make_codes(toy, 6, P.derive_rng(3, "psi/permutations"))
    dbl = P._Engine(toy, subj, None, None, 0, 0.0, "numba", 256, {}, None, "double")
    sgl = P._Engine(toy, subj, None, None, 0, 0.0, "numba", 256, {}, None, "single")
    assert dbl.blocked is not None and dbl.width % 32 == 0 and dbl.width >= toy.space.n_voxels
    for b in range(1, 6):
        ref = dbl.pooled(codes, b)["z"]
        np.testing.assert_allclose(dbl.permuted_z(codes, b), ref, rtol=0, atol=1e-12)
        zs = sgl.permuted_z(codes, b)
        assert np.abs(zs - ref).max() < 1e-6
        assert not np.array_equal(zs, ref)  # the single-precision path was taken
    a = P.psi_permutation_test(toy, 30, seed=3, backend="numba", precision="double")
    s = P.psi_permutation_test(toy, 30, seed=3, backend="numba")
    assert s.info["precision"] == "single" and s.info["kernel"] == "voxel-blocked"
    assert a.info["precision"] == "double"
    np.testing.assert_allclose(s.maxima[["max_z", "max_neg_z"]], a.maxima[["max_z", "max_neg_z"]],
                               rtol=0, atol=1e-6)
    for name in ("z", "tfce", "tfce_neg", "p_voxel", "p_voxel_neg", "p_tfce", "p_tfce_neg"):
        np.testing.assert_array_equal(s.maps[name], a.maps[name])
    # REML, a meta-regression and the NumPy back-end keep the voxel-major kernels
    r = P.psi_permutation_test(toy, 3, seed=3, backend="numba", heterogeneity="reml")
    assert r.info["kernel"] == "voxel-major" and r.info["precision"] == "double"
    with pytest.raises(ValueError, match="precision"):
        P.psi_permutation_test(toy, 2, precision="half")


@pytest.mark.parametrize("C", [[0, 1], [1, 0]])
def test_voxel_blocked_slope_kernel_agrees_with_the_estimator_kernel(toy, C):
    """Design ``[1, x]`` with a raw covariate (an age-like x): Freedman-Lane (``C = [0, 1]``) and
    subject permutations of a covariate-adjusted mean (``C = [1, 0]``) through the voxel-blocked
    kernel agree with the estimator's compiled fit of the same permuted effects."""
    x = np.array([23.0, 41.5, 30.2, 35.0, 27.8, 44.1])
    inp = P.PSIInputs(toy.imputations, toy.n1, toy.n2, toy.space, X=np.c_[np.ones(6), x], C=C)
    subj = None
    fit = res = None
    if inp.method == "subjects":
        subj = P.make_subject_images(inp.n1, inp.n2, inp.space,
                                     P.derive_rng(3, "psi/subject_images"))
    else:
        fit, res = P._freedman_lane_parts(inp, 0, 0.0, 256)
    codes = P.make_codes(inp, 5, P.derive_rng(3, "psi/permutations"))
    engines = {prec: P._Engine(inp, subj, fit, res, 0, 0.0, "numba", 256, {}, None, prec)
               for prec in ("double", "single")}
    ref_engine = P._Engine(inp, subj, fit, res, 0, 0.0, "numba", 256, {}, voxel_blocked=False)
    assert ref_engine.blocked is None
    for b in range(1, 5):
        ref = ref_engine.pooled(codes, b)["z"]
        # the estimator kernel adds a fit and a residual in float32 (1e-8 apart at most here)
        np.testing.assert_allclose(engines["double"].permuted_z(codes, b), ref, rtol=0,
                                   atol=1e-7)
        assert np.abs(engines["single"].permuted_z(codes, b) - ref).max() < 1e-6
    assert engines["single"].blocked is not None
    assert engines["single"].fl_fit is None  # Freedman-Lane parts kept only in blocked form


def test_dask_cluster_of_worker_processes_gives_the_serial_result(toy):
    """The permutation chunks run on a Dask ``LocalCluster`` of two worker processes, reached
    by its scheduler address as an existing cluster would be: the maxima table and the maps
    equal the serial run bit for bit, and the chunks did run in the workers."""
    import os

    import distributed

    from analysis.sdm.backend import dask_cluster

    kw = dict(n_permutations=9, seed=4, backend="numba", chunk_size=2)
    serial = P.psi_permutation_test(toy, **kw)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, memory_limit=0) as cluster, \
            dask_cluster(cluster.scheduler_address) as client, \
            distributed.get_task_stream(client) as tasks:
        pids = client.run(os.getpid)
        par = P.psi_permutation_test(toy, **kw)  # n_jobs=1: the cluster's cores decide
    assert len(pids) == 2 and os.getpid() not in pids.values()
    ran_on = {t["worker"] for t in tasks.data}
    assert ran_on and ran_on <= set(pids)
    assert sum(1 for t in tasks.data if "_run_chunk" in str(t["key"])) >= 4  # 8 / chunk 2
    pd.testing.assert_frame_equal(serial.maxima, par.maxima, check_exact=True)
    assert np.array_equal(serial.maxima.to_numpy(), par.maxima.to_numpy())
    for name, arr in serial.maps.items():
        assert np.array_equal(arr, par.maps[name], equal_nan=True), name


def test_engine_size_counts_its_arrays(toy):
    """Dask's ``sizeof`` (``sys.getsizeof``) sees the engine's arrays, so joblib's Dask back-end
    scatters it to the cluster once rather than packing it into every chunk's task."""
    import sys

    subj = P.make_subject_images(toy.n1, toy.n2, toy.space, P.derive_rng(3, "psi/subject_images"))
    engine = P._Engine(toy, subj, None, None, 0, 0.0, "numba", 256, {})
    held = toy.imputations.nbytes + sum(s.nbytes for s in subj) + engine.blocked.nbytes
    assert sys.getsizeof(engine) >= held


def test_dask_cluster_needs_an_address():
    from analysis.sdm.backend import dask_cluster

    with pytest.raises(ValueError, match="scheduler address"):
        with dask_cluster(" "):
            pass


def test_freedman_lane_meta_regression(toy):
    rng = np.random.default_rng(9)
    X = np.c_[np.ones(6), rng.standard_normal(6)]
    inp = P.PSIInputs(toy.imputations, toy.n1, toy.n2, toy.space, X=X, C=[0, 1])
    assert inp.method == "freedman-lane"
    res = P.psi_permutation_test(inp, n_permutations=6, seed=1)
    k1, k2 = inp.variance_coefficients()
    y = inp.imputations.astype(float)
    beta, cov, _ = P.reml_fixed(y, k1[:, None] + k2[:, None] * y * y, X, 0)  # DL
    _, _, z = P.rubin_z(beta[..., 1], cov[..., 1, 1])
    np.testing.assert_allclose(res.maps["z"], z, atol=1e-6)
    codes = P.make_codes(inp, 6, P.derive_rng(1, "psi/permutations"))
    assert np.array_equal(codes.order[0], np.arange(6))
    assert all(sorted(o) == list(range(6)) for o in codes.order)
    # a mean model adjusted for a covariate still permutes subjects
    assert P.PSIInputs(toy.imputations, toy.n1, toy.n2, toy.space, X=X, C=[1, 0]).method \
        == "subjects"


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_separate_tfce_null_keeps_the_voxel_null(toy, backend):
    """``tfce_subject_fwhm_mm``: the max-z null (and everything else of SDM-PSI's default) is
    unchanged; the TFCE null is that of a test whose subject images are the smoother ones,
    under the same permutation codes."""
    default = P.psi_permutation_test(toy, n_permutations=8, seed=5, backend=backend)
    sep = P.psi_permutation_test(toy, n_permutations=8, seed=5, backend=backend,
                                 tfce_subject_fwhm_mm=16.0, chunk_size=3)
    assert default.info["tfce_null"] == "shared" and default.info["tfce_subject_fwhm_mm"] is None
    assert sep.info["tfce_null"] == "separate" and sep.info["tfce_subject_fwhm_mm"] == 16.0
    cols = ["max_z", "max_neg_z"]
    np.testing.assert_array_equal(sep.maxima[cols].to_numpy(), default.maxima[cols].to_numpy())
    for name in ("z", "tfce", "tfce_neg", "p_voxel", "p_voxel_neg"):
        np.testing.assert_array_equal(sep.maps[name], default.maps[name])
    # observed (identity) TFCE unchanged; permuted TFCE maxima from the 16 mm images
    tf = ["max_tfce", "max_neg_tfce"]
    np.testing.assert_array_equal(sep.maxima[tf].iloc[0], default.maxima[tf].iloc[0])
    smooth = P.make_subject_images(toy.n1, toy.n2, toy.space,
                                   P.derive_rng(5, "psi/subject_images_tfce"), 16.0)
    ref = P.psi_permutation_test(toy, n_permutations=8, seed=5, backend=backend,
                                 subject_images=smooth)
    np.testing.assert_allclose(sep.maxima[tf].to_numpy(), ref.maxima[tf].to_numpy(),
                               rtol=1e-9)
    assert not np.allclose(sep.maxima[tf].iloc[1:], default.maxima[tf].iloc[1:])
    p = (sep.maxima["max_tfce"].to_numpy()[None] >= sep.maps["tfce"][:, None]).mean(1)
    np.testing.assert_allclose(sep.maps["p_tfce"], p)
    # pre-made images give the same test; a meta-regression (study permutation) ignores it
    again = P.psi_permutation_test(toy, n_permutations=8, seed=5, backend=backend,
                                   tfce_subject_images=smooth)
    np.testing.assert_array_equal(again.maxima.to_numpy(), sep.maxima.to_numpy())
    X = np.c_[np.ones(6), np.arange(6.0)]
    fl = P.PSIInputs(toy.imputations, toy.n1, toy.n2, toy.space, X=X, C=[0, 1])
    a = P.psi_permutation_test(fl, n_permutations=4, seed=1, backend=backend)
    b = P.psi_permutation_test(fl, n_permutations=4, seed=1, backend=backend,
                               tfce_subject_fwhm_mm=16.0)
    np.testing.assert_array_equal(a.maxima.to_numpy(), b.maxima.to_numpy())
    assert b.info["tfce_null"] == "shared"
    with pytest.raises(ValueError, match="tfce_subject_fwhm_mm"):
        P.psi_permutation_test(toy, n_permutations=2, tfce_subject_fwhm_mm=0.0)


def test_bad_inputs_raise(toy):
    with pytest.raises(ValueError, match="voxels"):
        P.PSIInputs(toy.imputations[:, :, :-1], toy.n1, toy.n2, toy.space)
    with pytest.raises(ValueError, match="entries"):
        P.PSIInputs(toy.imputations, toy.n1[:-1], toy.n2, toy.space)
    with pytest.raises(ValueError, match=">= 2 subjects"):
        P.PSIInputs(toy.imputations, np.r_[1.0, toy.n1[1:]], toy.n2, toy.space)
    with pytest.raises(ValueError, match="unknown array backend"):
        check_backend("torch")
    assert "numpy" in available_backends()
    assert array_module("numpy") is np


def test_naive_recomputation_agrees_with_the_algebra(toy):
    """The bench's from-scratch loop (explicit subject images, converged REML, ndimage TFCE)
    gives the same permutation maxima as the engine."""
    from analysis.bench import BENCHMARKS
    from analysis.bench.psi import naive_permutation

    assert "psi" in BENCHMARKS
    rng = P.derive_rng(8, "psi/subject_images")
    subj = P.make_subject_images(toy.n1, toy.n2, toy.space, rng)
    res = P.psi_permutation_test(toy, n_permutations=3, seed=8, backend="numba",
                                 subject_images=subj)
    codes = P.make_codes(toy, 3, P.derive_rng(8, "psi/permutations"))
    for b in (1, 2):
        naive = naive_permutation(toy, subj, codes, b)
        np.testing.assert_allclose(naive[:2], res.maxima.iloc[b, 1:3], rtol=1e-4)
        np.testing.assert_allclose(naive[2:], res.maxima.iloc[b, 3:5], rtol=1e-3)


def _null_study_maps(rng, space, n1, n2, fwhm_mm):
    """Simulated null studies: each map is J x (mean difference) of smooth N(0,1) subjects."""
    from analysis.sdm.statistics.metansue.imputation import correlated_fields

    g = np.empty((len(n1), space.n_voxels), dtype=np.float32)
    for i, (a, b) in enumerate(zip(n1, n2, strict=True)):
        pat = correlated_fields(rng, int(a), space, fwhm_mm)
        if np.isfinite(b):
            con = correlated_fields(rng, int(b), space, fwhm_mm)
            d, df = pat.mean(0) - con.mean(0), a + b - 2
        else:
            d, df = pat.mean(0), a - 1
        g[i] = hedges_j(df) * d
    return g


@pytest.mark.slow
def test_voxel_fwe_false_positive_rate_under_the_null():
    """Calibration (simulated null data): P(any voxel with p_FWE < 0.05) should be about 5 %."""
    from scipy.stats import binomtest

    space = _space((24, 24, 20))
    n_sim, n_perm, alpha = 200, 100, 0.05
    rng = np.random.default_rng(20240819)
    hits_voxel = hits_tfce = 0
    for s in range(n_sim):
        n1 = rng.integers(10, 30, 8).astype(float)
        n2 = np.where(np.arange(8) % 2 == 0, rng.integers(10, 30, 8), np.nan)
        g = _null_study_maps(rng, space, n1, n2, 8.0)
        imps = np.repeat(g[None], 3, axis=0)  # fully known study maps: identical imputations
        res = P.psi_permutation_test(P.PSIInputs(imps, n1, n2, space), n_perm, seed=s,
                                     backend="numba", subject_fwhm_mm=8.0)
        hits_voxel += bool(min(res.maps["p_voxel"].min(), res.maps["p_voxel_neg"].min()) < alpha)
        hits_tfce += bool(min(res.maps["p_tfce"].min(), res.maps["p_tfce_neg"].min()) < alpha)
    # Each direction is tested at alpha; with N permutations p < alpha means rank <= ceil(aN)-1,
    # which has probability q = (ceil(alpha N) - 1) / N under exchangeability (0.04 here), so
    # "any voxel in either direction" has rate about 1 - (1 - q)^2 (directions nearly independent).
    q = (np.ceil(alpha * n_perm) - 1) / n_perm
    expected = 1 - (1 - q) ** 2
    for hits in (hits_voxel, hits_tfce):
        ci = binomtest(hits, n_sim).proportion_ci(0.99)
        print(f"FWE false-positive rate {hits / n_sim:.3f} (99% CI {ci.low:.3f}-{ci.high:.3f}), "
              f"expected {expected:.3f}")
        assert ci.low <= expected <= ci.high


@pytest.mark.parametrize("C", [[0, 1], [1, 0]])
def test_two_column_kernel_matches_numpy(toy, C):
    """Compiled [1, x] kernel (Freedman-Lane for C=[0,1], sign flips for C=[1,0]) vs NumPy."""
    X = np.c_[np.ones(6), np.array([20.0, 35, 27, 41, 30, 24])]
    inp = P.PSIInputs(toy.imputations, toy.n1, toy.n2, toy.space, X=X, C=C)
    a = P.psi_permutation_test(inp, n_permutations=5, seed=6, backend="numpy")
    b = P.psi_permutation_test(inp, n_permutations=5, seed=6, backend="numba")
    assert a.method == ("freedman-lane" if C == [0, 1] else "subjects")
    for key in ("z", "g", "var", "tau2"):
        np.testing.assert_allclose(b.maps[key], a.maps[key], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.maxima.to_numpy(), a.maxima.to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("C", [[0, 1, 0], [1, 0, 0]])
def test_general_design_kernel_matches_numpy(toy, C):
    """Compiled general-design kernel (three columns: Freedman-Lane for a slope, sign flips for
    the covariate-adjusted mean) vs the NumPy back-end.
    """
    X = np.c_[np.ones(6), np.array([20.0, 35, 27, 41, 30, 24]), np.array([1.0, 0, 0, 1, 1, 0])]
    inp = P.PSIInputs(toy.imputations, toy.n1, toy.n2, toy.space, X=X, C=C)
    a = P.psi_permutation_test(inp, n_permutations=5, seed=6, backend="numpy")
    b = P.psi_permutation_test(inp, n_permutations=5, seed=6, backend="numba")
    assert a.method == ("freedman-lane" if C[1] else "subjects")
    for key in ("z", "g", "var", "tau2"):
        np.testing.assert_allclose(b.maps[key], a.maps[key], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.maxima.to_numpy(), a.maxima.to_numpy(), rtol=1e-6)
