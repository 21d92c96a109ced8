"""TFCE and FWE maps against the public SDM-PSI v6.21 run of Enge et al. (2021).

Checks: SDM-Z, uncorrected and voxel-FWE p maps against SDM-PSI's ``mod1`` maps, and TFCE values
(maxima and ``corrp_tfce``) against SDM-PSI's maps and ``fwe/maxsMinsZ.asc``.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm

from analysis.sdm.inference import tfce as T
from analysis.sdm.maps.space import MaskSpace


@pytest.fixture(scope="module")
def enge(enge_dir):
    space = MaskSpace(nib.load(enge_dir / "sdm_mask.nii.gz"))
    mod = enge_dir / "analysis_mod1"

    def vec(name):
        return space.from_img(nib.load(mod / f"{name}.nii.gz"))

    maxima = np.loadtxt(mod / "fwe" / "maxsMinsZ.asc", dtype=np.float64)
    return space, vec, maxima


def _toy_space(rng, shape=(18, 16, 14)):
    """An irregular mask and a smooth random field on a small grid."""
    blob = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    mask = blob > np.quantile(blob, 0.25)
    mask[0] = mask[-1] = False
    space = MaskSpace(nib.Nifti1Image(mask.astype(np.uint8), np.diag([-2.0, 2, 2, 1])))
    z = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    z = 3 * z / z.std()
    return space, z[mask]


def test_fast_tfce_equals_reference(rng):
    space, z = _toy_space(rng)
    pos, neg = T.tfce(z, space)
    ref_pos = T.tfce_reference(space.to_volume(np.maximum(z, 0)))[space.mask]
    ref_neg = T.tfce_reference(space.to_volume(np.maximum(-z, 0)))[space.mask]
    assert pos.max() > 0 and neg.max() > 0
    np.testing.assert_allclose(pos, ref_pos, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(neg, ref_neg, rtol=1e-12, atol=1e-9)


def test_tfce_hand_example():
    # A 1-D bar of 3 voxels (values 1, 2, 2) plus an isolated voxel (value 2) on a 3-D grid.
    mask = np.zeros((7, 3, 3), dtype=bool)
    mask[:, 1, 1] = True
    space = MaskSpace(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)))
    z = np.array([1.0, 2.0, 2.0, 0.0, 2.0, 0.0, 0.0])
    pos, neg = T.tfce(z, space, n_steps=2)
    # dh = 1; h = 1: only voxels strictly above 1 count -> clusters {1,2} (size 2) and {4} (1);
    # h = 2: nothing is strictly above the maximum.
    np.testing.assert_allclose(pos, [0, np.sqrt(2), np.sqrt(2), 0, 1, 0, 0])
    assert np.all(neg == 0)


def test_tfce_shape_error(rng):
    space, z = _toy_space(rng)
    with pytest.raises(ValueError, match="does not match"):
        T.tfce_vector(z[:-1], T.space_neighbours(space))
    with pytest.raises(ValueError, match="6-connectivity"):
        T.tfce(z, space, connectivity=26)


def test_neighbour_table_symmetric(rng):
    space, _ = _toy_space(rng)
    nbr = T.space_neighbours(space)
    src, col = np.nonzero(nbr >= 0)
    dst = nbr[src, col]
    # the opposite face of neighbour c is c ^ 1 (offsets are listed in -/+ pairs)
    assert np.array_equal(nbr[dst, col ^ 1], src)
    dist = np.abs(space.ijk[src] - space.ijk[dst]).sum(1)
    assert np.all(dist == 1)


def test_fwe_corrected_p_counts():
    null = np.array([1.0, 3.0, 2.0, 5.0])
    p = T.fwe_corrected_p(np.array([0.5, 2.0, 2.5, 5.0, 6.0]), null)
    np.testing.assert_allclose(p, [1.0, 0.75, 0.5, 0.25, 0.0])
    m = T.corrp_maps(np.array([4.0, -2.0]), null, null)
    np.testing.assert_allclose(m["corrp"], [0.75, 0.0])
    np.testing.assert_allclose(m["corrp_neg"], [0.0, 0.25])
    with pytest.raises(ValueError, match="non-finite"):
        T.fwe_corrected_p([1.0], [np.nan, 1.0])


def test_tfce_maxima_of_enge_mod1(enge):
    space, vec, maxima = enge
    pos, neg = T.tfce(vec("mod1_z"), space)
    # SDM-PSI row 1 (unpermuted): 87097.484375 / 821.288086
    np.testing.assert_allclose(pos.max(), maxima[0, 2], rtol=1e-5)
    np.testing.assert_allclose(neg.max(), maxima[0, 3], rtol=1e-5)
    # corrp_tfce: our TFCE against SDM's 999 permuted maxima plus our own identity maxima
    null_pos = np.r_[pos.max(), maxima[1:, 2]]
    null_neg = np.r_[neg.max(), maxima[1:, 3]]
    np.testing.assert_allclose(1 - T.fwe_corrected_p(pos, null_pos), vec("corrp_tfce"), atol=3e-8)
    np.testing.assert_allclose(1 - T.fwe_corrected_p(neg, null_neg), vec("corrp_tfce_neg"),
                               atol=3e-8)


def test_voxel_fwe_and_uncorrected_of_enge_mod1(enge):
    space, vec, maxima = enge
    z = vec("mod1_z")
    np.testing.assert_allclose(z, vec("mod1_g") / np.sqrt(vec("mod1_var")), atol=5e-6)
    np.testing.assert_allclose(vec("uncorrp"), norm.cdf(z), atol=3e-7)
    m = T.corrp_maps(z, maxima[:, 0], maxima[:, 1])
    # maxsMinsZ.asc is printed with 6 decimals: a voxel whose z equals a printed maximum to
    # that precision is a tie of unknown direction and is left out (a handful of voxels).
    null = np.sort(np.r_[maxima[:, 0], maxima[:, 1]])
    az = np.abs(z.astype(np.float64))
    i = np.clip(np.searchsorted(null, az), 1, len(null) - 1)
    tie = np.minimum(np.abs(az - null[i]), np.abs(az - null[i - 1])) < 7.5e-7
    assert tie.sum() < 1e-3 * len(z)
    np.testing.assert_allclose(m["corrp"][~tie], vec("corrp_voxel")[~tie], atol=3e-8)
    # SDM-PSI v6.21 stores the negative direction as -(1 - p_FWE)
    np.testing.assert_allclose(-m["corrp_neg"][~tie], vec("corrp_voxel_neg")[~tie], atol=3e-8)
    assert m["corrp"].max() == pytest.approx(0.999)
