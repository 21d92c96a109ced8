"""Voxel space of the engine: a mask on the 2 mm grid and the vector <-> volume mapping.

Every map inside the engine is a 1-D float array over the in-mask voxels, in C order of the
mask's ``np.nonzero`` (the order SDM-PSI also uses for its ``*.sdmimage.bin`` files).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np


@dataclass
class MaskSpace:
    """In-mask voxel indexing for one mask image.

    Parameters
    ----------
    mask_img : nibabel.Nifti1Image
        Binary mask on the analysis grid.
    """

    mask_img: nib.Nifti1Image
    mask: np.ndarray = field(init=False, repr=False)
    ijk: np.ndarray = field(init=False, repr=False)
    xyz: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.mask = np.asarray(self.mask_img.dataobj) > 0
        self.ijk = np.argwhere(self.mask)  # C order, same as np.nonzero
        aff = self.mask_img.affine
        self.xyz = self.ijk @ aff[:3, :3].T + aff[:3, 3]
        self._index = np.full(self.mask.shape, -1, dtype=np.int64)
        self._index[self.mask] = np.arange(len(self.ijk))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.mask.shape

    @property
    def affine(self) -> np.ndarray:
        return self.mask_img.affine

    @property
    def n_voxels(self) -> int:
        return len(self.ijk)

    def to_volume(self, vec, fill: float = 0.0) -> np.ndarray:
        """Vector over in-mask voxels -> 3-D array (``fill`` outside the mask)."""
        vec = np.asarray(vec)
        out = np.full(self.shape, fill, dtype=vec.dtype if vec.dtype.kind == "f" else float)
        out[self.mask] = vec
        return out

    def to_img(self, vec, fill: float = 0.0) -> nib.Nifti1Image:
        """Vector -> NIfTI image on the mask's grid (float32)."""
        return nib.Nifti1Image(self.to_volume(np.asarray(vec, dtype=np.float32), fill), self.affine)

    def from_img(self, img) -> np.ndarray:
        """NIfTI image on the same grid -> vector over in-mask voxels."""
        data = np.asarray(img.dataobj)
        if data.shape[:3] != self.shape:
            raise ValueError(f"image shape {data.shape} differs from the mask grid {self.shape}")
        return data[self.mask]

    def voxel_index(self, xyz) -> np.ndarray:
        """Index (into the voxel vector) of the voxel nearest each MNI coordinate; -1 if outside."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        ijk = np.rint((np.linalg.inv(self.affine) @ np.c_[xyz, np.ones(len(xyz))].T)[:3].T)
        ijk = ijk.astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=1)
        out = np.full(len(ijk), -1, dtype=np.int64)
        out[inside] = self._index[tuple(ijk[inside].T)]
        return out
