"""Thresholding and cluster tables (analysis.sdm.inference.clusters)."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import norm

from analysis.sdm.inference.clusters import (
    DECREASE,
    INCREASE,
    NEGATIVE,
    POSITIVE,
    TABLE_COLUMNS,
    THRESHOLDS,
    direction_labels,
    threshold_clusters,
    values_at_peaks,
)
from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape


@pytest.fixture(scope="module")
def space():
    """Whole analysis grid as the mask, so synthetic blobs are never cut by a mask."""
    return MaskSpace(nib.Nifti1Image(np.ones(grid_shape(), np.uint8), grid_affine()))


def _vox(space, xyz):
    return space.voxel_index(np.atleast_2d(xyz))


def _line(space, start, n, value, step=(2, 0, 0)):
    """n voxels in a row from MNI ``start``; value decreasing slightly from the first voxel."""
    xyz = np.array(start) + np.outer(np.arange(n), step)
    return _vox(space, xyz), value - 0.01 * np.arange(n)


def _ball(space, centre, radius_mm):
    d = np.linalg.norm(space.xyz - np.asarray(centre, float), axis=1)
    return d <= radius_mm, d


def test_defaults_are_the_papers():
    from analysis.config import load_config
    from analysis.stages.params import threshold_params

    d = THRESHOLDS
    assert d["p_threshold"] == 0.0025 and d["peak_z"] == 1.0 and d["min_voxels"] == 11
    assert d["local_peak_distance_mm"] == 8 and d["connectivity"] == 26
    # the compendium's configuration states the same thresholds
    assert threshold_params(load_config()) == d


def test_blobs_sizes_signs_and_extent_rule(space):
    z = np.zeros(space.n_voxels)
    big, d = _ball(space, (0, 48, 0), 6.0)  # positive sphere, peak at centre
    z[big] = 5.0 - 0.2 * d[big]
    neg, d2 = _ball(space, (-22, -48, -28), 4.0)
    z[neg] = -(4.5 - 0.2 * d2[neg])
    i11, v11 = _line(space, (60, -14, -12), 11, 3.5)  # exactly 11 voxels: kept (k > 10)
    z[i11] = v11
    i10, v10 = _line(space, (-52, -70, 2), 10, -3.5)  # exactly 10 voxels: dropped
    z[i10] = v10
    weak, _ = _ball(space, (40, 20, 40), 6.0)  # above zero but p >= 0.0025 everywhere
    z[weak] = norm.isf(0.0025) - 1e-6
    from analysis.labels import aal_labeler

    res = threshold_clusters(z, space, labeler=aal_labeler)
    pk = res.peaks()
    assert threshold_clusters(z, space).peaks()["aal_label"].isna().all()  # no labeler
    assert list(res.table.columns[: len(TABLE_COLUMNS)]) == TABLE_COLUMNS
    assert pk["direction"].tolist() == [INCREASE, INCREASE, DECREASE]
    assert pk["cluster_voxels"].tolist() == [int(big.sum()), 11, int(neg.sum())]
    assert pk[["x", "y", "z"]].to_numpy().tolist() == [[0, 48, 0], [60, -14, -12],
                                                        [-22, -48, -28]]
    assert np.allclose(pk["sdm_z"], [5.0, 3.5, -4.5])
    assert np.allclose(pk["p_voxel"], [norm.sf(5.0), norm.sf(3.5), norm.cdf(-4.5)])
    assert pk["cluster"].tolist() == [1, 2, 3]
    assert pk["aal_label"].tolist() == ["Cingulate_Ant_L", "Temporal_Mid_R", "Cerebelum_4_5_L"]
    assert res.n_clusters(INCREASE) == 2 and res.n_clusters(DECREASE) == 1
    # cluster label vector and thresholded map
    assert (res.labels == 1).sum() == big.sum() and (res.labels == 3).sum() == neg.sum()
    assert np.all(res.thresholded_z[res.labels == 0] == 0)
    assert np.allclose(res.thresholded_z[res.labels > 0], z[res.labels > 0])
    assert res.thresholded_z.dtype == np.float32
    # a stricter extent drops the 11-voxel line
    assert threshold_clusters(z, space, min_voxels=12).n_clusters(INCREASE) == 1
    # with k >= 10 the 10-voxel line appears as a decrease
    assert threshold_clusters(z, space, min_voxels=10).n_clusters(DECREASE) == 2


def test_p_threshold_is_strict_and_one_tailed(space):
    z = np.zeros(space.n_voxels)
    idx, _ = _line(space, (0, 0, 0), 15, 0.0)
    zc = norm.isf(0.0025)
    z[idx] = zc - 1e-6  # p just above 0.0025: not below the threshold
    assert len(threshold_clusters(z, space).table) == 0
    z[idx] = zc + 1e-6
    assert threshold_clusters(z, space).n_clusters(INCREASE) == 1
    z[idx] = -(zc + 1e-6)  # decreases use p- = Phi(z)
    res = threshold_clusters(z, space)
    assert res.n_clusters(DECREASE) == 1 and res.n_clusters(INCREASE) == 0


def test_peak_height_rule_with_given_p_maps(space):
    z = np.zeros(space.n_voxels)
    idx, _ = _line(space, (0, 0, 0), 15, 0.0)
    z[idx] = 0.8
    p_pos = np.ones(space.n_voxels)
    p_pos[idx] = 1e-4  # significant by the given p map, but peak SDM-Z 0.8 < 1
    p_neg = np.ones(space.n_voxels)
    assert len(threshold_clusters(z, space, p_vecs=(p_pos, p_neg)).table) == 0
    res = threshold_clusters(z, space, p_vecs=(p_pos, p_neg), peak_z=0.5)
    assert res.n_clusters(INCREASE) == 1
    assert res.peaks()["p_voxel"].iloc[0] == 1e-4


def test_connectivity(space):
    z = np.zeros(space.n_voxels)
    a, _ = _line(space, (0, 0, 0), 12, 4.0)  # x = 0 .. 22
    z[a] = 4.0
    corner, _ = _line(space, (24, 2, 2), 12, 3.9)  # shares only a corner with `a`
    z[corner] = 3.9
    assert threshold_clusters(z, space, connectivity=26).n_clusters(INCREASE) == 1
    assert threshold_clusters(z, space, connectivity=18).n_clusters(INCREASE) == 2
    z[corner] = 0
    edge, _ = _line(space, (22, 2, 2), 12, 3.9)  # shares an edge with the end of `a`
    z[edge] = 3.9
    assert threshold_clusters(z, space, connectivity=18).n_clusters(INCREASE) == 1
    assert threshold_clusters(z, space, connectivity=6).n_clusters(INCREASE) == 2
    with pytest.raises(ValueError, match="connectivity"):
        threshold_clusters(z, space, connectivity=8)


def test_local_peaks_min_distance(space):
    z = np.zeros(space.n_voxels)
    idx, vals = _line(space, (0, 0, 0), 15, 3.5)  # x = 0 .. 28 mm, slowly decreasing
    vals[0], vals[2], vals[10] = 5.0, 4.8, 4.6  # maxima at x = 0, 4 and 20 mm
    z[idx] = vals
    res = threshold_clusters(z, space)
    assert res.n_clusters(INCREASE) == 1
    assert res.table["peak_type"].tolist() == ["cluster", "local"]
    assert res.table["x"].tolist() == [0, 20]  # x = 4 lies within 8 mm of the peak
    assert (res.table["cluster_voxels"] == 15).all()
    res0 = threshold_clusters(z, space, local_peak_distance_mm=0)
    assert res0.table["x"].tolist() == [0, 4, 20]
    assert res0.table["sdm_z"].tolist() == [5.0, 4.8, 4.6]
    res1 = threshold_clusters(z, space, local_peaks=False)
    assert res1.table["x"].tolist() == [0]


def test_no_clusters_and_bad_input(space):
    res = threshold_clusters(np.zeros(space.n_voxels), space)
    assert len(res.table) == 0 and list(res.table.columns[:11]) == TABLE_COLUMNS
    assert res.labels.max() == 0
    with pytest.raises(ValueError, match="voxels"):
        threshold_clusters(np.zeros(10), space)


def test_values_at_peaks(space):
    z = np.zeros(space.n_voxels)
    blob, d = _ball(space, (0, 48, 0), 6.0)
    z[blob] = 5.0 - 0.2 * d[blob]
    g = np.arange(space.n_voxels, dtype=float)
    res = threshold_clusters(z, space)
    out = values_at_peaks(res.table, {"hedges_g": g})
    v = int(_vox(space, (0, 48, 0))[0])
    assert out["hedges_g"].iloc[0] == g[v]
    out2 = values_at_peaks(res.table.drop(columns="voxel"), {"hedges_g": g}, space)
    assert out2["hedges_g"].iloc[0] == g[v]


def _sdm_report(path):
    """Clusters and local peaks of an SDM-PSI ``threshold`` HTML report."""
    html = path.read_text(encoding="latin-1")
    cell = r"<tr><td>(-?\d+,-?\d+,-?\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td>"
    clusters = []
    for m in re.finditer(cell + r"(?:<td>(\d+)</td>)?", html):
        xyz = [int(v) for v in m.group(1).split(",")]
        if m.group(4):
            clusters.append({"xyz": xyz, "z": float(m.group(2)), "voxels": int(m.group(4)),
                             "local": []})
        else:
            clusters[-1]["local"].append(xyz)
    return clusters


def test_reproduces_sdm_psi_cluster_report(enge_dir):
    """Reproduces SDM-PSI v6.21's cluster table of Enge et al. (2021), mod1.

    Thresholding voxel-FWE p < 0.001 (``1 - corrp_voxel``) with clusters >= 50 voxels must give
    SDM's seven clusters with identical sizes and peaks; this holds with 26-connectivity only
    (6 and 18 give different sizes), which fixes the default connectivity. With no minimum
    distance, the local peaks of the largest cluster are SDM's 29 local peaks.
    """
    sp = MaskSpace(nib.load(enge_dir / "sdm_mask.nii.gz"))
    mod = enge_dir / "analysis_mod1"
    z = sp.from_img(nib.load(mod / "mod1_z.nii.gz"))
    p_pos = 1 - sp.from_img(nib.load(mod / "corrp_voxel.nii.gz"))
    p_neg = 1 - sp.from_img(nib.load(mod / "corrp_voxel_neg.nii.gz"))
    ref = _sdm_report(mod / "mod1_z_voxelCorrected_p_0.00100_50.htm")
    assert len(ref) == 7
    res = threshold_clusters(z, sp, p_threshold=0.001, peak_z=0, min_voxels=50,
                             p_vecs=(p_pos, p_neg), local_peak_distance_mm=0)
    pk = res.peaks()
    assert res.n_clusters(DECREASE) == 0
    got = sorted(zip(pk["cluster_voxels"], map(tuple, pk[["x", "y", "z"]].to_numpy()),
                     strict=True))
    want = sorted((c["voxels"], tuple(c["xyz"])) for c in ref)
    assert got == want
    assert np.allclose(sorted(pk["sdm_z"]), sorted(c["z"] for c in ref), atol=5e-4)
    first = res.table[res.table["cluster"] == 1][["x", "y", "z"]].to_numpy().tolist()
    assert sorted(first) == sorted(ref[0]["local"])
    for conn in (6, 18):
        other = threshold_clusters(z, sp, p_threshold=0.001, peak_z=0, min_voxels=50,
                                   p_vecs=(p_pos, p_neg), connectivity=conn, local_peaks=False)
        assert sorted(other.peaks()["cluster_voxels"]) != sorted(c["voxels"] for c in ref)


def test_direction_labels_follow_the_design(space):
    """Two-sample studies pool patient-control differences; with any one-sample study (Enge et
    al. 2021) the directions are the sign of the pooled effect, and every table says so."""
    assert direction_labels([18.0, 8.0]) == (INCREASE, DECREASE)
    assert direction_labels([np.nan, np.nan]) == (POSITIVE, NEGATIVE)
    assert direction_labels([18.0, np.nan]) == (POSITIVE, NEGATIVE)
    z = np.zeros(space.n_voxels)
    pos, d = _ball(space, (0, 48, 0), 6.0)
    z[pos] = 5.0 - 0.2 * d[pos]
    neg, d2 = _ball(space, (-22, -48, -28), 6.0)
    z[neg] = -(5.0 - 0.2 * d2[neg])
    res = threshold_clusters(z, space, directions=(POSITIVE, NEGATIVE))
    assert list(res.peaks()["direction"]) == [POSITIVE, NEGATIVE]
    assert res.directions == (POSITIVE, NEGATIVE)
    assert res.n_clusters(POSITIVE) == 1 and res.n_clusters(INCREASE) == 0
    default = threshold_clusters(z, space)
    assert list(default.peaks()["direction"]) == [INCREASE, DECREASE]
    np.testing.assert_array_equal(res.labels, default.labels)
    with pytest.raises(ValueError, match="must differ"):
        threshold_clusters(z, space, directions=("x", "x"))
