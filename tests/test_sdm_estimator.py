"""The SDM-PSI estimator: wiring, determinism, outputs, covariates (small masks, simulated data).

All data here are simulated (labelled as such); they test the machinery, not any finding.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from analysis.sdm.errors import DataError
from analysis.sdm.estimator import (
    SDMPSI,
    analyse_imputations,
    design_matrix,
    parse_hypothesis,
)
from analysis.sdm.inputs.dataset import SDMDataset
from analysis.sdm.maps.space import MaskSpace, grid_affine
from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.random_effects import fit_random_effects
from analysis.sdm.statistics.rubin import pool_fits


def _box_mask(center=(-40, 16, -4), half=(14, 14, 10)):
    """Box mask (on the 2 mm grid) around an MNI point."""
    data = np.zeros((91, 109, 91), np.uint8)
    inv = np.linalg.inv(grid_affine())
    lo = np.rint(inv @ np.r_[np.subtract(center, half), 1])[:3].astype(int)
    hi = np.rint(inv @ np.r_[np.add(center, half), 1])[:3].astype(int)
    sl = tuple(slice(min(a, b), max(a, b) + 1) for a, b in zip(lo, hi, strict=True))
    data[sl] = 1
    return nib.Nifti1Image(data, grid_affine())


def _simulated_dataset():
    """Simulated studies: 4 report a positive peak near (-40,16,-4), 2 report nothing there."""
    studies = pd.DataFrame({
        "study": ["simA", "simB", "simC", "simD", "simE", "simF"],
        "n1": [20, 25, 18, 30, 22, 16], "n2": [20, 24, 18, 28, np.nan, np.nan],
        "t_thr": [3.3, 3.2, 3.5, 3.1, 3.4, 3.6], "age": [30.0, 35, 28, 40, 33, 25],
    })
    peaks = pd.DataFrame({
        "study": ["simA", "simB", "simC", "simD", "simE"],
        "x": [-40, -42, -38, -40, -30], "y": [16, 18, 14, 16, 10], "z": [-4, -6, -2, -4, 4],
        "t": [5.1, 4.4, np.nan, 6.0, -4.0], "sign": [1, 1, 1, 1, -1],
    })
    return SDMDataset(studies, peaks)


@pytest.fixture(scope="module")
def small_fit():
    mask = _box_mask()
    est = SDMPSI(anisotropy=0.0, imputations=8, seed=11)
    return est, mask, est.fit(_simulated_dataset(), mask_img=mask)


def test_fit_outputs(small_fit):
    _, mask, res = small_fit
    nv = int(np.asarray(mask.dataobj).sum())
    assert set(res.maps) >= {"g", "var", "z", "tau2", "i2", "h2", "q", "p", "p_pos", "p_neg"}
    for name, vec in res.maps.items():
        assert vec.shape == (nv,) and np.all(np.isfinite(vec)), name
    m = res.maps
    np.testing.assert_allclose(m["z"], m["g"] / np.sqrt(m["var"]), rtol=1e-5)
    assert np.all((m["i2"] >= 0) & (m["i2"] <= 100)) and np.all(m["tau2"] >= 0)
    np.testing.assert_allclose(m["h2"], 1 / (1 - m["i2"] / 100), rtol=1e-4)
    np.testing.assert_allclose(m["p_pos"] + m["p_neg"], 1, atol=1e-6)
    assert res.imputations.shape == (8, 6, nv) and res.df == 5
    assert res.bounds.lower.shape == (6, nv)
    assert "SDM-PSI" in res.description_
    # the strongest positive effect lies near the simulated peaks
    peak = res.space.xyz[np.argmax(m["z"])]
    assert np.linalg.norm(peak - np.array([-40, 16, -4])) < 12
    assert m["z"].max() > 2


def test_fit_is_seeded(small_fit):
    est, mask, res = small_fit
    again = SDMPSI(anisotropy=0.0, imputations=8, seed=11).fit(_simulated_dataset(), mask)
    np.testing.assert_array_equal(again.maps["z"], res.maps["z"])
    other = SDMPSI(anisotropy=0.0, imputations=8, seed=12).fit(_simulated_dataset(), mask)
    assert not np.array_equal(other.maps["z"], res.maps["z"])


def test_save_maps_round_trip(small_fit, tmp_path):
    _, _, res = small_fit
    paths = res.save_maps(tmp_path, names=["g", "z"])
    assert [p.name for p in paths] == ["g.nii.gz", "z.nii.gz"]
    back = res.space.from_img(nib.load(paths[1]))
    np.testing.assert_array_equal(back, res.maps["z"])
    with pytest.raises(KeyError):
        res.get_map("nope")


def test_known_bounds_reduce_to_plain_random_effects(rng):
    """With every effect known, all imputations coincide and Rubin = one DerSimonian-Laird fit
    (the default estimator)."""
    space = MaskSpace(_box_mask(half=(4, 4, 4)))
    k, nv = 7, space.n_voxels
    n1 = rng.integers(10, 40, k).astype(float)
    g = rng.normal(0.3, 0.3, (k, nv)).astype(np.float32)
    res = SDMPSI(imputations=3, seed=1).fit_bounds(g, g, n1, None, space)
    k1, k2 = variance_coefficients(n1)
    gd = g.astype(float)
    fit = fit_random_effects(gd, k1[:, None] + k2[:, None] * gd**2)
    # REML stops at |delta tau2| < 1e-6 from different starting values (MLE vs moment start):
    # tolerances of that order on g, var and tau2
    np.testing.assert_allclose(res.maps["g"], fit["coef"], atol=2e-5)
    np.testing.assert_allclose(res.maps["var"], fit["var"], rtol=1e-4)
    np.testing.assert_allclose(res.maps["tau2"], fit["tau2"], atol=2e-5)
    np.testing.assert_allclose(res.maps["i2"], 100 * fit["I2"], atol=0.05)


def test_compiled_and_numpy_pooling_agree(rng):
    m, k, nv = 6, 9, 50
    n1 = rng.integers(10, 40, k).astype(float)
    y = rng.normal(0.2, 0.4, (m, k, nv)).astype(np.float32)
    fast = analyse_imputations(y, n1)  # intercept-only: compiled kernel
    k1, k2 = variance_coefficients(n1)
    yd = y.astype(float)
    slow = pool_fits(fit_random_effects(yd, k1[:, None] + k2[:, None] * yd**2))
    for key in ("g", "var", "z", "tau2", "i2", "h2", "q"):
        np.testing.assert_allclose(fast[key], slow[key], rtol=1e-7, atol=1e-10, err_msg=key)


def test_meta_regression_path(rng):
    m, k, nv = 5, 10, 30
    n1 = rng.integers(10, 40, k).astype(float)
    X = np.c_[np.ones(k), rng.normal(size=k)]
    y = rng.normal(0.2, 0.4, (m, k, nv)).astype(np.float32)
    out = analyse_imputations(y, n1, None, X, C=[0, 1])
    k1, k2 = variance_coefficients(n1)
    yd = y.astype(float)
    ref = pool_fits(fit_random_effects(yd, k1[:, None] + k2[:, None] * yd**2, X, [0, 1]),
                    [0, 1])
    np.testing.assert_allclose(out["z"], ref["z"], rtol=1e-10)
    assert out["df"] == k - 2


def test_design_and_hypothesis():
    studies = _simulated_dataset().studies.assign(kind=["a", "b", "a", "b", "c", "a"])
    X, names = design_matrix(studies, ["age", "kind"])
    assert names == ["intercept", "age", "kind[b]", "kind[c]"]
    # covariates enter centred (the intercept is the mean at the covariates' averages)
    np.testing.assert_allclose(X[:, 2], np.array([0, 1, 0, 1, 0, 0]) - 1 / 3)
    np.testing.assert_allclose(X[:, 1:].mean(axis=0), 0, atol=1e-12)
    raw, _ = design_matrix(studies, ["age", "kind"], centre=False)
    np.testing.assert_array_equal(raw[:, 2], [0, 1, 0, 1, 0, 0])
    np.testing.assert_allclose(raw[:, 1] - raw[:, 1].mean(), X[:, 1])
    np.testing.assert_array_equal(parse_hypothesis("0+1+0+0", 4), [0, 1, 0, 0])
    np.testing.assert_array_equal(parse_hypothesis(None, 2), [1, 0])
    with pytest.raises(ValueError):
        parse_hypothesis([1, 0], 3)
    with pytest.raises(DataError, match="age2"):
        design_matrix(studies, ["age2"])
    bad = studies.assign(age=[1.0, np.nan, 2, 3, 4, 5])
    with pytest.raises(DataError, match="row 2"):
        design_matrix(bad, ["age"])


def test_covariate_fit_runs(small_fit):
    _, mask, _ = small_fit
    res = SDMPSI(anisotropy=0.0, imputations=4, seed=3, covariates=["age"],
                 hypothesis=[0, 1]).fit(_simulated_dataset(), mask)
    assert res.df == 4 and np.all(np.isfinite(res.maps["z"]))
    assert res.params["design_columns"] == ["intercept", "age"]


def _small_sdm_project(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "sdm_table.txt").write_text(
        "study\tn1\tt_thr\tthreshold\tage\n"
        "simA\t20\t3.3\tuncorrected\t30\n"
        "simB\t25\t3.2\tuncorrected\t35\n"
        "simC\t18\t3.5\tuncorrected\t28\n"
        "simD\t30\t3.1\tuncorrected\t40\n")
    (folder / "simA.other_mni.txt").write_text("-40,16,-4,5.1\n")
    (folder / "simB.other_mni.txt").write_text("-42,18,-6,4.4\n")
    (folder / "simC.other_mni.txt").write_text("-38,14,-2,p\n")
    (folder / "simD.no_peaks.txt").write_text("")
    mask = tmp_path / "mask.nii.gz"
    nib.save(_box_mask(half=(10, 10, 8)), str(mask))
    return folder, mask


def test_meta_command_on_an_sdm_folder(tmp_path, mirror):
    """``python -m analysis meta`` on a small simulated SDM-PSI project folder."""
    import json

    from analysis.cli import main

    folder, mask = _small_sdm_project(tmp_path)
    out = tmp_path / "out"
    rc = main(["meta", "--sdm-dir", str(folder), "--out", str(out), "--mask", str(mask),
               "--imputations", "4", "--anisotropy", "0", "--seed", "5"])
    assert rc == 0
    for name in ("g", "var", "z", "tau2", "i2", "p"):
        assert (out / f"{name}.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_studies"] == 4 and summary["params"]["imputations"] == 4
    table = pd.read_csv(out / "clusters.tsv", sep="\t")
    assert "sdm_z" in table.columns


def test_meta_command_runs_the_permutations_on_a_dask_scheduler(tmp_path, mirror):
    """``--dask-scheduler ADDRESS``: the permutations run on that cluster (here a local one of
    two worker threads) and write the same maxima and corrected maps as on this machine."""
    import distributed

    from analysis.cli import main

    folder, mask = _small_sdm_project(tmp_path)
    args = ["meta", "--sdm-dir", str(folder), "--mask", str(mask), "--imputations", "3",
            "--anisotropy", "0", "--seed", "5", "--permutations", "12"]
    assert main([*args, "--out", str(tmp_path / "here")]) == 0
    with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as watcher, \
            distributed.get_task_stream(watcher) as tasks:
        assert main([*args, "--out", str(tmp_path / "there"),
                     "--dask-scheduler", cluster.scheduler_address]) == 0
    assert any("_run_chunk" in str(t["key"]) for t in tasks.data)
    here, there = tmp_path / "here", tmp_path / "there"
    assert (there / "fwe" / "maxima.tsv").read_bytes() == (here / "fwe" / "maxima.tsv").read_bytes()
    for name in ("corrp_voxel", "corrp_tfce"):
        assert np.array_equal(nib.load(str(here / f"{name}.nii.gz")).get_fdata(),
                              nib.load(str(there / f"{name}.nii.gz")).get_fdata())


def _censored_bounds(rng, k, nv):
    from analysis.sdm.statistics.effect_sizes import g_from_t

    n1 = rng.integers(12, 40, k).astype(float)
    gthr = g_from_t(3.2, n1)[:, None]
    K = np.clip(rng.uniform(-0.5, 1, (k, nv)), 0, 0.95)
    gp = g_from_t(rng.uniform(3.5, 7, (k, 1)), n1[:, None])
    lo = (-gthr + K * (gp + gthr)).astype(np.float32)
    up = (gthr + K * (gp - gthr)).astype(np.float32)
    return lo, up, n1


def test_fast_pipeline_agrees_with_reference_pipeline(rng):
    """Fast engine vs the per-voxel reference pipeline (independent draws): same maps up to
    Monte-Carlo error of the imputations."""
    from sdm_reference import reference_meta

    space = MaskSpace(_box_mask(half=(2, 0, 0)))
    k, nv = 6, space.n_voxels
    lo, up, n1 = _censored_bounds(rng, k, nv)
    fast = SDMPSI(imputations=150, seed=2).fit_bounds(lo, up, n1, None, space).maps
    slow = reference_meta(lo, up, n1, None, imputations=150, rng=np.random.default_rng(3))
    # Monte-Carlo SE of the difference of two pooled g (150 imputations each) < 0.013;
    # neighbouring voxels share the spatially correlated noise of the fast path
    np.testing.assert_allclose(fast["g"], slow["g"], atol=0.04)
    np.testing.assert_allclose(fast["z"], slow["z"], atol=0.4)
    np.testing.assert_allclose(np.sqrt(fast["tau2"]), np.sqrt(slow["tau2"]), atol=0.06)


@pytest.mark.bench
def test_bench_engine_vs_reference_speed(rng, capsys):
    """Speed ratio of the fast engine over the per-voxel reference (same maths)."""
    import time

    from sdm_reference import reference_meta

    space = MaskSpace(_box_mask(half=(6, 6, 4)))
    k, nv = 11, space.n_voxels
    lo, up, n1 = _censored_bounds(rng, k, nv)
    est = SDMPSI(imputations=50, seed=2)
    warm = MaskSpace(_box_mask(half=(0, 0, 2)))
    est.fit_bounds(lo[:, :warm.n_voxels], up[:, :warm.n_voxels], n1, None, warm)  # compile
    t0 = time.perf_counter()
    est.fit_bounds(lo, up, n1, None, space)
    t_fast = time.perf_counter() - t0
    sub = slice(0, 40)
    t0 = time.perf_counter()
    reference_meta(lo[:, sub], up[:, sub], n1, None, imputations=50)
    t_ref = (time.perf_counter() - t0) * nv / 40
    with capsys.disabled():
        print(f"\nengine {t_fast:.2f} s vs reference {t_ref:.1f} s (extrapolated) on {nv} "
              f"voxels, 11 studies, 50 imputations: ratio {t_ref / t_fast:.0f}x")
    assert t_ref / t_fast > 10


def test_estimator_follows_nilearn_conventions():
    """__init__ stores, fit checks; get_params/set_params round-trip; a short repr."""
    est = SDMPSI(imputations=1, heterogeneity="bogus")  # stored, not checked yet
    assert est.get_params()["imputations"] == 1
    with pytest.raises(ValueError, match="at least 2 imputations"):
        est._checked()
    est.set_params(imputations=3)
    with pytest.raises(ValueError, match="heterogeneity"):
        est._checked()
    est.set_params(heterogeneity="reml")
    assert est._checked()["heterogeneity"] == "reml"
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(imputation=3)
    assert repr(est) == "SDMPSI(imputations=3, heterogeneity='reml')"
    assert repr(SDMPSI(kernel_template=np.ones((13, 2, 2, 2)))) == (
        "SDMPSI(kernel_template=<array (13, 2, 2, 2)>)")


def test_nimare_round_trip():
    """SDMDataset -> NiMARE Dataset (t and sign as coordinate columns) -> SDMDataset."""
    ds = _simulated_dataset()
    back = SDMDataset.from_nimare(ds.to_nimare())
    assert back.ids == [str(s) for s in ds.ids]
    pd.testing.assert_frame_equal(
        back.studies[["n1", "n2", "t_thr"]].astype(float).reset_index(drop=True),
        ds.studies[["n1", "n2", "t_thr"]].astype(float).reset_index(drop=True))
    key = ["study", "x", "y", "z"]
    a = ds.peaks.assign(study=ds.peaks["study"].astype(str)).sort_values(key)
    b = back.peaks.sort_values(key)
    np.testing.assert_allclose(b[["x", "y", "z", "t"]].to_numpy(float),
                               a[["x", "y", "z", "t"]].to_numpy(float))
    assert (b["sign"].to_numpy() == a["sign"].to_numpy()).all()
    with pytest.raises(ValueError, match="no 'z_stat' column"):
        SDMDataset.from_nimare(ds.to_nimare(), t_column="z_stat")


def test_mle_survives_a_covariate_without_variation(rng):
    """A covariate that is constant among the studies (its centred column is zero) leaves a
    flat direction in the MetaNSUE likelihood: the fit falls back to a minimum-norm Newton step
    instead of failing with a singular Hessian, and the intercept is the mean model's (the
    slope itself is not estimable: its z map is NaN, not an error)."""
    space = MaskSpace(_box_mask(half=(2, 2, 2)))
    k, nv = 6, space.n_voxels
    n1 = rng.integers(12, 30, k).astype(float)
    lo = np.full((k, nv), -0.6, np.float32)
    up = np.full((k, nv), 0.6, np.float32)
    lo[:3], up[:3] = 0.4, 0.4  # half the studies known
    X = np.column_stack([np.ones(k), np.zeros(k)])
    with_cov = SDMPSI(imputations=3, seed=1).fit_bounds(lo, up, n1, None, space, X=X)
    mean = SDMPSI(imputations=3, seed=1).fit_bounds(lo, up, n1, None, space)
    assert np.isfinite(with_cov.mle["beta"]).all()
    np.testing.assert_allclose(with_cov.mle["beta"][:, 0], mean.mle["beta"][:, 0], atol=1e-6)


def test_shared_noise_fields_give_the_fits_they_would_draw_alone(small_fit):
    """Fits given one ``noise_fields`` object (the main fit, a subset without its second study,
    a covariate fit) equal the same fits without it, bit for bit, and draw each study
    position's fields once.
    """
    from analysis.sdm.diagnostics.jackknife import Jackknife

    est, _, res = small_fit
    bounds, table = res.bounds, res.study_table
    noise = est.noise_fields(bounds.space)
    shared = est.fit_preprocessed(bounds, table, noise=noise)
    assert noise.drawn == len(bounds.studies) and shared.noise is noise
    np.testing.assert_array_equal(shared.imputations, res.imputations)
    keep = [s for s in bounds.studies if s != bounds.studies[1]]
    alone = est.fit_preprocessed(bounds.subset(keep))
    with_noise = est.fit_preprocessed(bounds.subset(keep), noise=noise)
    np.testing.assert_array_equal(with_noise.imputations, alone.imputations)
    cov = SDMPSI(anisotropy=0.0, imputations=8, seed=11, covariates=["age"],
                 hypothesis=[0, 1])
    np.testing.assert_array_equal(cov.fit_preprocessed(bounds, table, noise=noise).maps["z"],
                                  cov.fit_preprocessed(bounds, table).maps["z"])
    assert noise.drawn == len(bounds.studies)  # nothing drawn again
    jk_shared = Jackknife().transform(shared).tables["jackknife"]
    jk_alone = Jackknife().transform(res).tables["jackknife"]
    pd.testing.assert_frame_equal(jk_shared, jk_alone)


def test_noise_fields_of_another_stream_are_refused(small_fit):
    est, _, res = small_fit
    other = SDMPSI(anisotropy=0.0, imputations=8, seed=12).noise_fields(res.bounds.space)
    with pytest.raises(ValueError, match="noise fields were drawn for"):
        est.fit_preprocessed(res.bounds, noise=other)
    fewer = SDMPSI(anisotropy=0.0, imputations=4, seed=11).noise_fields(res.bounds.space)
    with pytest.raises(ValueError, match="noise fields were drawn for"):
        est.fit_preprocessed(res.bounds, noise=fewer)
