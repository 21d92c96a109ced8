"""Mixed inputs: statistical maps among peak studies. The maps here are simulated to agree
with the peaks of Enge et al. (2021) (or of simulated studies), none is a study's own map."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from analysis.bench.mixed_maps import SPREAD, mixed_inputs, peak_consistent_tmap
from analysis.sdm.inputs.dataset import SDMDataset
from analysis.sdm.inputs.statmaps import sample_map
from analysis.sdm.maps.preprocess import preprocess
from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape, nearest_voxel
from analysis.sdm.statistics.effect_sizes import g_from_t


def _cube(centre, half, within=None):
    data = np.zeros(grid_shape(), np.uint8)
    i, j, k = nearest_voxel([centre], grid_affine())[0]
    data[i - half:i + half, j - half:j + half, k - half:k + half] = 1
    if within is not None:
        data *= (np.asarray(within.dataobj) > 0).astype(np.uint8)
    return nib.Nifti1Image(data, grid_affine())


def test_simulated_map_agrees_with_the_peaks():
    studies = pd.DataFrame({"study": ["a", "b"], "n1": [20, 18], "n2": [22, np.nan],
                            "t_thr": [3.2, 3.5]})
    peaks = pd.DataFrame({"study": ["a", "a", "b"], "x": [-40, -30, -40], "y": [16, 10, 16],
                          "z": [-4, 4, -4], "t": [5.0, -4.2, 4.4], "sign": [1, -1, 1]})
    space = MaskSpace(_cube((-40, 16, -4), 7))
    b = preprocess(SDMDataset(studies, peaks), space, anisotropy=0.0, progress=False)
    rng = np.random.default_rng(0)
    for i in range(2):
        t = sample_map(peak_consistent_tmap(b.lower[i], b.upper[i], b.n1[i], b.n2[i], space,
                                            rng, 12.0), space)
        g = g_from_t(t, b.n1[i], None if np.isnan(b.n2[i]) else b.n2[i])
        half = (b.upper[i].astype(float) - b.lower[i]) / 2
        mid = (b.upper[i].astype(float) + b.lower[i]) / 2
        # inside the peaks' interval, by at most SPREAD of its half width from its middle
        assert np.all(np.abs(g - mid) <= SPREAD * half + 1e-5)
        # and it varies: not the middle itself
        assert np.abs(g - mid).max() > 0.1 * half.max()
    # at a peak with known t the map reproduces the listed t
    at = space.voxel_index([[-40, 16, -4]])[0]
    t_b = sample_map(peak_consistent_tmap(b.lower[1], b.upper[1], b.n1[1], b.n2[1], space,
                                          rng, 12.0), space)
    np.testing.assert_allclose(t_b[at], 4.4, rtol=1e-5)


@pytest.mark.slow
def test_more_maps_narrow_the_imputation_spread_on_enge(enge_dir):
    """Enge et al. (2021) on a cube around SDM's global maximum, k = 0, 10, 50 of its studies
    replaced by peak-consistent simulated maps (4 imputations): the exact share grows, the
    imputation spread shrinks to 0, and the z map moves."""
    from analysis.commands.validate_sdm import GLOBAL_MAX_MNI

    dataset = SDMDataset.from_sdm_project(enge_dir)
    space = MaskSpace(_cube(GLOBAL_MAX_MNI, 8, dataset.mask))
    table = mixed_inputs(dataset, space, ks=(0, 10, 50), imputations=4, seed=1,
                         recreation_mask=dataset.mask)
    exact = table["exact study-voxels (%)"].to_numpy()
    spread = table["imputation SD, all studies"].to_numpy()
    assert exact[0] < exact[1] < exact[2] == 100.0
    assert spread[0] > spread[1] > spread[2] == 0.0
    assert table["r(z, k=0)"].iloc[0] == pytest.approx(1.0)
    assert table["r(z, k=0)"].iloc[2] < 0.999
