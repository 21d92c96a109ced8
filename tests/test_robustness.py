"""Jackknife, meta-regression and the robustness stage (SDM manual; Albajes-Eizagirre 2019)."""

from __future__ import annotations

import types

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from analysis.sdm.diagnostics import jackknife as jk
from analysis.sdm.diagnostics import metaregression as mr
from analysis.sdm.errors import DataError
from analysis.sdm.inference.clusters import (
    DECREASE,
    INCREASE,
    NEGATIVE,
    POSITIVE,
    threshold_clusters,
)
from analysis.sdm.maps.space import MaskSpace, grid_affine
from analysis.stages import robustness as rs


@pytest.fixture(scope="module")
def blobs():
    """A block of the real grid with one positive and one negative blob (simulated z)."""
    shape = (91, 109, 91)
    mask = np.zeros(shape, dtype=bool)
    mask[30:60, 40:70, 30:50] = True
    space = MaskSpace(nib.Nifti1Image(mask.astype(np.uint8), grid_affine()))
    ijk = space.ijk
    d_pos = np.linalg.norm(ijk - [38, 50, 40], axis=1)
    d_neg = np.linalg.norm(ijk - [52, 60, 40], axis=1)
    z = 5.0 * np.exp(-d_pos**2 / 8) - 4.0 * np.exp(-d_neg**2 / 8)
    return space, z


def test_leave_out_sets():
    studies = ["a", "b", "c", "d"]
    loo = jk.leave_one_out_sets(studies)
    assert loo == {"a": ["b", "c", "d"], "b": ["a", "c", "d"], "c": ["a", "b", "d"],
                   "d": ["a", "b", "c"]}
    lgo = jk.leave_group_out_sets(studies, ["x", "y", "x", "z"])
    assert lgo == {"x": ["b", "d"], "y": ["a", "c", "d"], "z": ["a", "b", "c"]}
    with pytest.raises(ValueError, match="group labels"):
        jk.leave_group_out_sets(studies, ["x"])


def test_refit_subsets_passes_sorted_indices():
    seen = []
    out = jk.refit_subsets(lambda idx: seen.append(idx.tolist()) or len(idx), ["a", "b", "c"],
                           {"no b": ["c", "a"]})
    assert seen == [[0, 2]] and out == {"no b": 2}
    with pytest.raises(ValueError, match="unknown studies"):
        jk.refit_subsets(lambda idx: 0, ["a"], {"x": ["q"]})


def test_refit_subsets_fits_each_set_of_studies_once():
    studies = ["a", "b", "c", "d"]
    seen, cache = [], {}

    def fit(idx):
        seen.append(idx.tolist())
        return object()

    loo = jk.refit_subsets(fit, studies, jk.leave_one_out_sets(studies), cache=cache)
    lodo = jk.refit_subsets(fit, studies, jk.leave_group_out_sets(studies, ["x", "x", "y", "z"]),
                            cache=cache)
    # disorders y and z have one study each: their fits are the leave-one-out fits
    assert len(seen) == 5 and sorted(map(tuple, seen)) == sorted(set(map(tuple, seen)))
    assert lodo["y"] is loo["c"] and lodo["z"] is loo["d"] and lodo["x"] is not loo["a"]


def test_cluster_survival(blobs):
    space, z = blobs
    base = threshold_clusters(z, space, local_peaks=False)
    peaks = base.peaks()
    assert list(peaks["direction"]) == [INCREASE, DECREASE]
    no_pos = np.where(z > 0, 0.5 * z / z.max(), z)   # positive blob below threshold
    shifted = np.roll(z, 1)                          # both blobs moved 2 mm: still overlap
    flipped = -z                                     # directions swapped: nothing survives
    tab = jk.cluster_survival(base.labels, peaks, {"same": z, "no_pos": no_pos,
                                                   "shifted": shifted, "flipped": flipped},
                              space, n_studies={"same": 10})
    got = tab.set_index(["left_out", "direction"])["survives"]
    assert got[("same", INCREASE)] and got[("same", DECREASE)]
    assert not got[("no_pos", INCREASE)] and got[("no_pos", DECREASE)]
    assert got[("shifted", INCREASE)] and got[("shifted", DECREASE)]
    assert not got[("flipped", INCREASE)] and not got[("flipped", DECREASE)]
    assert tab.loc[tab.left_out == "same", "n_studies"].iloc[0] == 10
    summ = jk.survival_summary(tab)
    pos = summ[summ.direction == INCREASE].iloc[0]
    assert (pos.n_analyses, pos.n_survive) == (4, 2)
    assert set(pos.failed_without.split(";")) == {"no_pos", "flipped"}


def test_cluster_survival_compares_signs_not_labels(blobs):
    """A cluster survives where a re-fit has a cluster of the same sign, whatever the direction
    labels (one-sample data: positive, negative); an empty family (a leave-one-group-out the
    study table cannot serve) does not break the summary."""
    space, z = blobs
    base = threshold_clusters(z, space, local_peaks=False, directions=(POSITIVE, NEGATIVE))
    tab = jk.cluster_survival(base.labels, base.peaks(), {"same": z, "flipped": -z}, space)
    got = tab.set_index(["left_out", "direction"])["survives"]
    assert got[("same", POSITIVE)] and got[("same", NEGATIVE)]
    assert not got[("flipped", POSITIVE)] and not got[("flipped", NEGATIVE)]
    empty = jk.cluster_survival(base.labels, base.peaks(), {}, space, "leave-one-disorder-out")
    summ = jk.survival_summary(pd.concat([tab, empty], ignore_index=True))
    assert list(summ["n_survive"]) == [1, 1]
    assert list(summ["failed_without"]) == ["flipped", "flipped"]


def test_missing_study_columns_are_named():
    table = pd.DataFrame({"study": ["a", "b", "c"], "age": [20.0, 20.0, 20.0],
                          "female_pct": [np.nan] * 3, "disorder": ["x", "", "y"]})
    assert rs._missing_column(table, "disorder") is None
    assert "no 'paradigm' column" in rs._missing_column(table, "paradigm")
    assert "no study" in rs._missing_column(table, "female_pct")
    assert rs._missing_column(table, "age") is None
    assert "same value" in rs._missing_column(table, "age", varying=True)


def test_covariate_design():
    studies = pd.DataFrame({"age": [20.0, 30.0, np.nan, 40.0], "treated": [1, 0, 1, 1]})
    X, keep = mr.covariate_design(studies, "age")
    assert keep.tolist() == [True, True, False, True]
    np.testing.assert_allclose(X, [[1, -10], [1, 0], [1, 10]])
    with pytest.raises(KeyError, match="not a column"):
        mr.covariate_design(studies, "iq")
    with pytest.raises(ValueError, match="distinct values"):
        mr.covariate_design(studies.assign(treated=1), "treated")


def test_slope_at_peaks_and_peak_tables(blobs):
    space, z = blobs
    peaks = threshold_clusters(z, space, local_peaks=False).peaks()
    v = space.n_voxels
    slope = np.full(v, 0.1)
    var = np.full(v, 0.04)
    res = types.SimpleNamespace(maps={"g": slope, "var": var, "z": slope / np.sqrt(var)},
                                space=space, n1=np.ones(7))
    tab = mr.slope_at_peaks(res, peaks, "age", 1)
    assert list(tab.columns) == mr.REGRESSION_COLUMNS
    assert len(tab) == 2
    np.testing.assert_allclose(tab["slope_z"], 0.5)
    np.testing.assert_allclose(tab["p_two_tailed"], 0.617075, atol=1e-6)
    assert (tab["n_slope_clusters"] == 0).all() and (tab["n_studies"] == 7).all()
    assert tab["p_fwe_freedman_lane"].isna().all()
    p_pos = np.full(v, 0.5)
    p_pos[:3] = 0.01
    fl = types.SimpleNamespace(maps={"p_voxel": p_pos, "p_voxel_neg": np.full(v, 0.9)})
    tab = mr.slope_at_peaks(res, peaks, "age", 1, perm=fl)
    assert (tab["n_fwe_voxels"] == 3).all()
    np.testing.assert_allclose(tab["p_fwe_freedman_lane"], 0.5)  # positive slope: p_voxel
    # heterogeneity and FWE at peaks read the right voxel and direction
    maps = {"tau2": z * 0 + 0.01, "i2": np.arange(v, dtype=float), "h2": z * 0 + 1,
            "q": z * 0 + 3, "q_z": z * 0}
    het = rs.heterogeneity_at_peaks(maps, peaks, 10)
    assert het["i2_percent"].tolist() == peaks["voxel"].astype(float).tolist()
    pmap = {"p_voxel": np.full(v, 0.01), "p_voxel_neg": np.full(v, 0.2),
            "p_tfce": np.full(v, 0.03), "p_tfce_neg": np.full(v, 0.04), "z": z,
            "tfce": z * 0 + 5, "tfce_neg": z * 0 + 6}
    fwe = rs.fwe_at_peaks(types.SimpleNamespace(maps=pmap), peaks, z, 0.05)
    assert fwe["survives_fwe_voxel"].tolist() == [True, False]
    assert fwe["survives_fwe_tfce"].tolist() == [True, True]
    assert fwe["tfce"].tolist() == [5.0, 6.0]


def test_meta_fit_file_round_trip(tmp_path):
    """Stage robustness re-fits from what stage meta saved: bounds, seed, imputations."""
    from types import SimpleNamespace

    from analysis.sdm.maps.preprocess import Bounds
    from analysis.stages.meta import load_fit, save_fit

    space = MaskSpace(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), grid_affine()))
    rng = np.random.default_rng(0)
    lo = rng.normal(size=(2, space.n_voxels)).astype(np.float32)
    b = Bounds(["a", "b"], lo, lo + 1, np.array([0.5, 0.6]), np.array([10.0, 12.0]),
               np.array([11.0, np.nan]), space)
    save_fit(tmp_path / "fit.npz", SimpleNamespace(bounds=b, params={"imputations": 7}), 1234)
    b2, seed, m = load_fit(tmp_path / "fit.npz", space)
    assert (seed, m, b2.studies) == (1234, 7, ["a", "b"])
    assert np.array_equal(b2.lower, b.lower) and np.array_equal(b2.upper, b.upper)
    assert np.array_equal(b2.n2, b.n2, equal_nan=True)
    other = MaskSpace(nib.Nifti1Image(np.ones((3, 3, 2), np.uint8), grid_affine()))
    with pytest.raises(DataError, match="voxels"):
        load_fit(tmp_path / "fit.npz", other)


def test_bench_command_lists_the_registry(capsys):
    from analysis.cli import main

    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "psi:" in out and "psi-enge:" in out
    assert "characterisation.macm_vs_nimare" in out  # adopted from another module's dict


@pytest.mark.slow
@pytest.mark.timeout(3600)  # stage meta then 20 re-fits: more than 15 min on 2 shared cores
def test_robustness_stage_quick_on_the_data(tmp_path):
    """The whole stage in quick mode on data/ (re-fits 20 subsets: slow), after the meta stage
    it reads its fit from (``intermediate/meta_fit.npz``)."""
    from analysis import paths
    from analysis.config import load_config
    from analysis.pipeline import Context, run_stages

    results = tmp_path / "results"
    assert run_stages(["meta"], quick=True, force=True, data_dir=paths.data_dir(),
                      results_dir=results) == {"meta": "ran"}
    staging = tmp_path / "staging"
    staging.mkdir()
    ctx = Context("robustness", load_config(), paths.data_dir(), results, staging, quick=True)
    values = rs.produce(ctx)
    for rel in ["maps/corrp_voxel.nii.gz", "maps/corrp_voxel_neg.nii.gz",
                "maps/corrp_tfce.nii.gz", "maps/corrp_tfce_neg.nii.gz",
                "tables/permutation_maxima.tsv", "tables/fwe_peaks.tsv", "tables/jackknife.tsv",
                "tables/jackknife_summary.tsv", "tables/metaregression.tsv",
                "tables/heterogeneity.tsv", "tables/subgroups.tsv"]:
        assert (staging / rel).is_file(), rel
    maxima = pd.read_csv(staging / "tables/permutation_maxima.tsv", sep="\t")
    assert len(maxima) == load_config()["sdm"]["permutations_quick"]
    jack = pd.read_csv(staging / "tables/jackknife.tsv", sep="\t")
    assert set(jack["analysis"]) <= {"leave-one-out", "leave-one-disorder-out"}
    reg = pd.read_csv(staging / "tables/metaregression.tsv", sep="\t")
    assert set(reg["covariate"]) == {"age", "female_pct", "treated"}
    assert values["permutations"] == len(maxima)
    assert values["psi_identity_vs_meta_max_abs_z_diff"] < 0.05
