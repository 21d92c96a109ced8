"""The compendium's analysis masks on SDM-PSI's 2 mm grid (:mod:`analysis.sdm.space`).

The analysis mask of every SDM analysis is SDM-PSI's own grey-matter mask (``gray_matter_2mm``,
193,768 voxels), as SDM-PSI writes it into a project folder (``sdm_mask.nii.gz``): the engine's
own default mask (:func:`analysis.sdm.space.sdm_gm_mask`), which the engine fetches from its
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
from analysis.sdm.space import ijk_to_mni, mni152_gm_mask, sdm_gm_mask

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


def analysis_mask(config: dict) -> nib.Nifti1Image:
    """The engine's analysis mask: :func:`gm_mask` (``sdm.mask``), optionally restricted to a
    region of interest.

    ``sdm.analysis_roi_radius_mm`` (default ``null``: the whole grey-matter mask) keeps only the
    grey-matter voxels within that radius of the published peaks
    (``characterisation.seeds_published``). Only the test suite's quick pipeline runs use it,
    to check the wiring of every stage in seconds; every result of ``make paper`` uses the whole
    mask, and ``values.json`` records the number of voxels analysed.
    """
    cfg = config
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
