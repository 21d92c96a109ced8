"""The 2 mm MNI grid of SDM-PSI (91 x 109 x 91) and the masks defined on it.

The analysis mask of every SDM analysis is SDM-PSI's own grey-matter mask (``gray_matter_2mm``,
193,768 voxels), as SDM-PSI writes it into a project folder (``sdm_mask.nii.gz``; fetched with
its sha256 from the public SDM-PSI run of Enge et al. 2021, dataset ``validation/enge2021_sdm``).
Peaks are moved into it and maps recreated on it, as SDM-PSI does. The MNI152 (2009) grey-matter
template of nilearn (resampled, probability > 0.2: 181,054 voxels) remains available as
``sdm.mask: mni152_gray_matter``; the MNI152 brain mask screens input coordinates.
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np

from analysis.config import load_config


def grid_shape() -> tuple[int, int, int]:
    """Shape of the analysis grid."""
    return tuple(load_config()["grid"]["shape"])


def grid_affine() -> np.ndarray:
    """Voxel-to-MNI affine of the analysis grid (LAS orientation like SDM-PSI's images)."""
    return np.asarray(load_config()["grid"]["affine"], dtype=float)


def mni_to_ijk(xyz, affine: np.ndarray | None = None) -> np.ndarray:
    """MNI millimetres (n x 3) to fractional voxel indices (n x 3)."""
    aff = grid_affine() if affine is None else affine
    xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
    return (np.linalg.inv(aff) @ np.c_[xyz, np.ones(len(xyz))].T)[:3].T


def ijk_to_mni(ijk, affine: np.ndarray | None = None) -> np.ndarray:
    """Voxel indices (n x 3) to MNI millimetres (n x 3)."""
    aff = grid_affine() if affine is None else affine
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    return (aff @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T


def _resample(img, interpolation: str):
    from nilearn.image import resample_img

    return resample_img(
        img, target_affine=grid_affine(), target_shape=grid_shape(),
        interpolation=interpolation, force_resample=True, copy_header=True,
    )


@lru_cache(maxsize=1)
def brain_mask() -> nib.Nifti1Image:
    """MNI152 2 mm brain mask on the analysis grid (used to reject coordinates outside the brain)."""
    from nilearn.datasets import load_mni152_brain_mask

    img = _resample(load_mni152_brain_mask(resolution=2), "nearest")
    data = (np.asarray(img.dataobj) > 0).astype(np.uint8)
    return nib.Nifti1Image(data, grid_affine())


#: dataset file of SDM-PSI's gray_matter_2mm mask (written by SDM-PSI v6.21 into Enge et al.'s
#: project folder)
SDM_MASK_FILE = "validation/enge2021_sdm/sdm_mask.nii.gz"

#: analysis masks by name (``sdm.mask`` of the configuration), as the manuscript names them
MASK_DESCRIPTIONS = {
    "sdm_gray_matter": "SDM-PSI's own grey-matter mask (gray_matter_2mm)",
    "mni152_gray_matter": "the MNI152 grey-matter template thresholded at probability 0.2",
}
MASKS = tuple(MASK_DESCRIPTIONS)


@lru_cache(maxsize=1)
def mni152_gm_mask(threshold: float = 0.2) -> nib.Nifti1Image:
    """nilearn's MNI152 grey-matter probability > threshold, on the analysis grid."""
    from nilearn.datasets import load_mni152_gm_template

    img = _resample(load_mni152_gm_template(resolution=2), "continuous")
    data = (np.asarray(img.dataobj) > threshold).astype(np.uint8)
    return nib.Nifti1Image(data, grid_affine())


@lru_cache(maxsize=1)
def sdm_gm_mask() -> nib.Nifti1Image:
    """SDM-PSI's grey-matter mask ``gray_matter_2mm`` (193,768 voxels), fetched and checked."""
    from analysis.fetch import fetch_file

    img = nib.load(str(fetch_file(SDM_MASK_FILE)))
    data = (np.asarray(img.dataobj) > 0).astype(np.uint8)
    if data.shape != grid_shape() or not np.allclose(img.affine, grid_affine()):
        raise ValueError(f"{SDM_MASK_FILE} is not on the analysis grid")
    return nib.Nifti1Image(data, grid_affine())


def gm_mask(name: str | None = None) -> nib.Nifti1Image:
    """The whole-brain analysis mask: ``name`` (default config ``sdm.mask``, SDM-PSI's own).

    Parameters
    ----------
    name : {"sdm_gray_matter", "mni152_gray_matter"}, optional
    """
    name = name or load_config()["sdm"].get("mask", "sdm_gray_matter")
    if name == "sdm_gray_matter":
        return sdm_gm_mask()
    if name == "mni152_gray_matter":
        return mni152_gm_mask()
    raise ValueError(f"unknown mask {name!r}; one of {MASKS}")


def in_mask(xyz, mask: nib.Nifti1Image | None = None, tolerance_mm: float = 0.0) -> np.ndarray:
    """Whether each MNI coordinate falls in the mask (nearest voxel; optional tolerance in mm).

    With ``tolerance_mm`` > 0 a coordinate counts as inside when any mask voxel lies within that
    distance (peaks reported on the cortical surface can fall just outside a template mask).
    """
    mask = brain_mask() if mask is None else mask
    data = np.asarray(mask.dataobj) > 0
    ijk = np.rint(mni_to_ijk(xyz, mask.affine)).astype(int)
    out = np.zeros(len(ijk), dtype=bool)
    r = int(np.ceil(tolerance_mm / 2.0))
    offs = [(a, b, c) for a in range(-r, r + 1) for b in range(-r, r + 1) for c in range(-r, r + 1)
            if 4.0 * (a * a + b * b + c * c) <= tolerance_mm ** 2] or [(0, 0, 0)]
    for n, (i, j, k) in enumerate(ijk):
        for a, b, c in offs:
            ii, jj, kk = i + a, j + b, k + c
            if (0 <= ii < data.shape[0] and 0 <= jj < data.shape[1] and 0 <= kk < data.shape[2]
                    and data[ii, jj, kk]):
                out[n] = True
                break
    return out


def analysis_mask(config: dict | None = None) -> nib.Nifti1Image:
    """The engine's analysis mask: :func:`gm_mask` (``sdm.mask``), optionally restricted to a
    region of interest.

    ``sdm.analysis_roi_radius_mm`` (default ``null``: the whole grey-matter mask) keeps only the
    grey-matter voxels within that radius of the published peaks
    (``characterisation.seeds_published``). Only the test suite's quick pipeline runs use it,
    to check the wiring of every stage in seconds; every result of ``make paper`` uses the whole
    mask, and ``values.json`` records the number of voxels analysed.
    """
    cfg = config or load_config()
    img = gm_mask(cfg["sdm"].get("mask"))
    radius = cfg["sdm"].get("analysis_roi_radius_mm")
    if not radius:
        return img
    data = np.asarray(img.dataobj) > 0
    ijk = np.argwhere(data)
    xyz = ijk_to_mni(ijk, img.affine)
    centres = np.asarray(cfg["characterisation"]["seeds_published"], dtype=float)
    d2 = ((xyz[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)
    keep = np.zeros_like(data)
    sel = ijk[d2 <= float(radius) ** 2]
    keep[tuple(sel.T)] = True
    return nib.Nifti1Image(keep.astype(np.uint8), img.affine)
