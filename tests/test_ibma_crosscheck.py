"""Maps-only SDM-PSI reduces to a random-effects meta-analysis of g maps: the engine's z, g,
tau2, I2 and Q equal NiMARE's image-based DerSimonian-Laird (and PyMARE's heterogeneity
statistics) on the same g and variance maps; REML agrees with NiMARE's REML to the optimisers'
tolerance. The maps are simulated (:func:`analysis.simulate.simulate_tmap`), not real studies.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from analysis.bench.ibma import EFFECT_XYZ, compare_ibma, simulated_map_dataset
from analysis.sdm.maps.space import grid_affine, grid_shape, nearest_voxel


def _cube(half=4):
    data = np.zeros(grid_shape(), np.uint8)
    i, j, k = nearest_voxel([EFFECT_XYZ], grid_affine())[0]
    data[i - half:i + half, j - half:j + half, k - half:k + half] = 1
    return nib.Nifti1Image(data, grid_affine())


@pytest.fixture(scope="module")
def dataset():
    return simulated_map_dataset(6, seed=7)


def test_maps_only_mean_equals_nimare_dersimonian_laird(dataset):
    r = compare_ibma(dataset, _cube(), heterogeneity="dl")
    assert r["studies"] == 6 and r["voxels"] == 512
    d = r["max_abs_diff"]
    # the maps are float32, the engine's pooled maps too: agreement to float32 precision
    assert d["g"] < 1e-6 and d["z"] < 1e-5 and r["max_rel_diff_z"] < 1e-5
    assert d["tau2"] < 1e-6 and d["i2"] < 1e-4 and d["q"] < 1e-4
    # not a trivial agreement: the planted effect gives a clear positive z and heterogeneity
    # varies over the voxels
    assert r["z_range"][1] > 3


def test_maps_only_reml_agrees_with_nimare_reml(dataset):
    r = compare_ibma(dataset, _cube(3), heterogeneity="reml")
    d = r["max_abs_diff"]
    assert d["g"] < 1e-5 and d["z"] < 1e-4 and d["tau2"] < 1e-5
