"""The compendium's analysis masks on SDM-PSI's 2 mm grid (:mod:`analysis.sdm.maps.space`).

The analysis mask of every SDM analysis is SDM-PSI's own grey-matter mask (``gray_matter_2mm``,
193,768 voxels), as SDM-PSI writes it into a project folder (``sdm_mask.nii.gz``): the engine's
own default mask (:func:`analysis.sdm.maps.space.sdm_gm_mask`), which the engine fetches from its
canonical URL into the user cache (:data:`analysis.sdm.datasets.SDM_GM_MASK`). It is the file
:data:`SDM_MASK_FILE` of the public SDM-PSI run of Enge et al. (2021) in the dataset registry,
with the same URL and SHA-256 (tested), so the compendium and the engine share one copy (mirror
or cache). Peaks are moved into it and maps recreated on it, as SDM-PSI does. The MNI152 (2009)
grey-matter template of nilearn (resampled, probability > 0.2: 181,054 voxels) remains
available as ``sdm.mask: mni152_gray_matter``; the MNI152 brain mask screens input coordinates.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from analysis.sdm.datasets import SDM_GM_MASK
from analysis.sdm.maps.space import ijk_to_mni, mni152_gm_mask, sdm_gm_mask

#: dataset file of SDM-PSI's gray_matter_2mm mask (written by SDM-PSI v6.21 into Enge et al.'s
#: project folder), the engine's :data:`analysis.sdm.datasets.SDM_GM_MASK`
SDM_MASK_FILE = SDM_GM_MASK.relpath

#: analysis masks by name (``sdm.mask`` of the configuration), as the manuscript names them
MASK_DESCRIPTIONS = {
    "sdm_gray_matter": "SDM-PSI's own grey-matter mask (gray_matter_2mm)",
    "mni152_gray_matter": "the MNI152 grey-matter template thresholded at probability 0.2",
}
MASKS = tuple(MASK_DESCRIPTIONS)


def gm_mask(name: str | None = None) -> nib.Nifti1Image:
    """The whole-brain analysis mask by name (configuration ``sdm.mask``; default SDM-PSI's own).

    Parameters
    ----------
    name : {"sdm_gray_matter", "mni152_gray_matter"}, optional
    """
    name = name or "sdm_gray_matter"
    if name == "sdm_gray_matter":
        return sdm_gm_mask()
    if name == "mni152_gray_matter":
        return mni152_gm_mask()
    raise ValueError(f"unknown mask {name!r}; one of {MASKS}")


def analysis_mask(name: str | None = None, roi_radius_mm: float | None = None,
                  centres=None) -> nib.Nifti1Image:
    """The engine's analysis mask: :func:`gm_mask`, optionally restricted to a region of
    interest.

    The pipeline passes the configuration's values (:func:`analysis.stages.params.masks`):
    ``sdm.mask``, ``sdm.analysis_roi_radius_mm`` (default ``null``: the whole grey-matter mask)
    and the published peaks ``characterisation.seeds_published`` as ``centres``. Only the test
    suite's quick pipeline runs use a region, to check the wiring of every stage in seconds;
    every result of ``make paper`` uses the whole mask, and ``values.json`` records the number
    of voxels analysed.

    Parameters
    ----------
    name : {"sdm_gray_matter", "mni152_gray_matter"}, optional
        The whole-brain mask (:func:`gm_mask`).
    roi_radius_mm : float, optional
        Keep only the mask voxels within this radius (mm) of ``centres``; ``None`` or 0: the
        whole mask.
    centres : array-like, shape (n, 3), optional
        MNI centres of the region (needed with ``roi_radius_mm``).
    """
    img = gm_mask(name)
    if not roi_radius_mm:
        return img
    if centres is None:
        raise ValueError("a region of interest needs its centres")
    data = np.asarray(img.dataobj) > 0
    ijk = np.argwhere(data)
    xyz = ijk_to_mni(ijk, img.affine)
    centres = np.asarray(centres, dtype=float).reshape(-1, 3)
    radius = roi_radius_mm
    d2 = ((xyz[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)
    keep = np.zeros_like(data)
    sel = ijk[d2 <= float(radius) ** 2]
    keep[tuple(sel.T)] = True
    return nib.Nifti1Image(keep.astype(np.uint8), img.affine)
