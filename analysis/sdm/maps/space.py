"""Voxel space of the engine: SDM-PSI's 2 mm MNI grid, masks on it, and the vector <-> volume
mapping.

Every map inside the engine is a 1-D float array over the in-mask voxels, in C order of the
mask's ``np.nonzero`` (the order SDM-PSI also uses for its ``*.sdmimage.bin`` files).

The engine's default analysis mask is SDM-PSI's own grey-matter mask ``gray_matter_2mm``
(:func:`sdm_gm_mask`, 193,768 voxels): the file SDM-PSI v6.21 wrote into the project folder of
Enge et al. (2021, NeuroImage 241:118436; github SkeideLab/meta_semantics at commit de53184b,
``results/sdm/sdm_mask.nii.gz``, MIT licence). The engine does not ship it: it is downloaded
from that URL into the user cache on first use and checked against its SHA-256
(:data:`analysis.sdm.datasets.SDM_GM_MASK`, :func:`analysis.sdm.datasets.fetch_file`; a mirror
folder in ``PAINEMP_MIRROR`` or a cached copy serves it without a network).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import nibabel as nib
import numpy as np

#: SDM-PSI's analysis grid: 2 mm MNI voxels, 91 x 109 x 91
VOXEL_MM = 2.0
GRID_SHAPE = (91, 109, 91)
#: its voxel-to-MNI affine (LAS orientation, like SDM-PSI's images)
GRID_AFFINE = ((-2.0, 0.0, 0.0, 90.0), (0.0, 2.0, 0.0, -126.0), (0.0, 0.0, 2.0, -72.0),
               (0.0, 0.0, 0.0, 1.0))


def data_file_bytes(name: str, sha256: str | None = None) -> bytes:
    """Contents of a file shipped in ``analysis/sdm/data/``, checked against its SHA-256.

    Parameters
    ----------
    name : str
        File name inside the engine's data folder.
    sha256 : str, optional
        Expected checksum; a mismatch raises ``ValueError`` naming the file.

    Returns
    -------
    bytes
    """
    data = resources.files("analysis.sdm").joinpath("data", name).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"analysis/sdm/data/{name}: SHA-256 differs from the recorded "
                         f"{sha256} (damaged installation?)")
    return data


def grid_shape() -> tuple[int, int, int]:
    """Shape of the analysis grid (:data:`GRID_SHAPE`)."""
    return GRID_SHAPE


def grid_affine() -> np.ndarray:
    """Voxel-to-MNI affine of the analysis grid (:data:`GRID_AFFINE`)."""
    return np.array(GRID_AFFINE, dtype=float)


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


def nearest_voxel(xyz, affine: np.ndarray | None = None) -> np.ndarray:
    """MNI millimetres (n x 3) to the indices of the nearest voxel centres (n x 3, int64).

    :func:`mni_to_ijk` rounded half to even (:func:`numpy.rint`); indices may lie outside the
    grid, callers check the bounds they need.
    """
    return np.rint(mni_to_ijk(xyz, affine)).astype(np.int64)


#: rank of :func:`scipy.ndimage.generate_binary_structure` for each voxel connectivity
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def connectivity_structure(connectivity: int) -> np.ndarray:
    """The 3 x 3 x 3 structuring element of a voxel connectivity (6 faces, 18 edges, 26
    corners), as :func:`scipy.ndimage.label` takes it.

    Raises
    ------
    ValueError
        ``connectivity`` is not 6, 18 or 26.
    """
    from scipy import ndimage

    rank = _CONNECTIVITY_RANK.get(int(connectivity))
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, rank)


def neighbour_indices(mask: np.ndarray, offsets) -> np.ndarray:
    """The in-mask neighbour at each offset of every in-mask voxel.

    Parameters
    ----------
    mask : ndarray of bool (3-D)
        Voxels numbered in C order of ``np.nonzero(mask)`` (the order of :class:`MaskSpace`).
    offsets : array-like of int, shape (n, 3)
        Voxel offsets, in the order of the columns returned.

    Returns
    -------
    ndarray of int64, shape (V, n)
        Index (into the in-mask vector) of the voxel at ``ijk + offsets[c]``; ``-1`` where it is
        outside the mask or the grid.
    """
    mask = np.asarray(mask, dtype=bool)
    ijk = np.argwhere(mask)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(len(ijk))
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 3)
    shape = np.array(mask.shape)
    out = np.full((len(ijk), len(offsets)), -1, dtype=np.int64)
    for c, off in enumerate(offsets):
        nb = ijk + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        out[ok, c] = index[tuple(nb[ok].T)]
    return out


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


@lru_cache(maxsize=1)
def mni152_gm_mask(threshold: float = 0.2) -> nib.Nifti1Image:
    """nilearn's MNI152 grey-matter probability > threshold, on the analysis grid."""
    from nilearn.datasets import load_mni152_gm_template

    img = _resample(load_mni152_gm_template(resolution=2), "continuous")
    data = (np.asarray(img.dataobj) > threshold).astype(np.uint8)
    return nib.Nifti1Image(data, grid_affine())


@lru_cache(maxsize=1)
def sdm_gm_mask() -> nib.Nifti1Image:
    """SDM-PSI's grey-matter mask ``gray_matter_2mm`` on the analysis grid (193,768 voxels).

    The engine's default analysis mask (:meth:`analysis.sdm.estimator.SDMPSI.fit` uses it when
    neither the call nor the dataset gives one), as SDM-PSI v6.21 writes it into a project folder
    (``sdm_mask.nii.gz``). Fetched on first use from its canonical URL into the user cache and
    checked against its SHA-256 (:data:`analysis.sdm.datasets.SDM_GM_MASK`; module docstring).

    Returns
    -------
    nibabel.Nifti1Image
        uint8 mask (1 inside) with :func:`grid_affine`.

    Raises
    ------
    analysis.sdm.datasets.FetchError
        The file cannot be obtained (``PAINEMP_OFFLINE`` set or no network, and neither a mirror
        nor a cached copy; or a failed download): one line saying how to get it or do without.
    """
    from analysis.sdm.datasets import CACHE_ENV, MIRROR_ENV, SDM_GM_MASK, FetchError, fetch_file

    try:
        path = fetch_file(*SDM_GM_MASK)
    except FetchError as exc:
        raise FetchError(
            f"SDM-PSI's grey-matter mask, the engine's default mask, is not available: {exc}. "
            f"Fetch it once with a network connection (from {SDM_GM_MASK.url}), or put the "
            f"file at {SDM_GM_MASK.relpath} under the folder named by {MIRROR_ENV} or "
            f"{CACHE_ENV}; or do without it: pass mask_img= to SDMPSI.fit with a "
            f"kernel_template other than 'enge_fit' (that template is laid out on this mask)"
        ) from exc
    img = nib.load(path)
    data = (np.asarray(img.dataobj) > 0).astype(np.uint8)
    if data.shape != grid_shape() or not np.allclose(img.affine, grid_affine()):
        raise ValueError(f"{path}: SDM-PSI's mask is not on the analysis grid")
    return nib.Nifti1Image(data, grid_affine())


def in_mask(xyz, mask: nib.Nifti1Image | None = None, tolerance_mm: float = 0.0) -> np.ndarray:
    """Whether each MNI coordinate falls in the mask (nearest voxel; optional tolerance in mm).

    With ``tolerance_mm`` > 0 a coordinate counts as inside when any mask voxel lies within that
    distance (peaks reported on the cortical surface can fall just outside a template mask).
    """
    mask = brain_mask() if mask is None else mask
    data = np.asarray(mask.dataobj) > 0
    ijk = nearest_voxel(xyz, mask.affine)
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
        self.xyz = ijk_to_mni(self.ijk, self.mask_img.affine)
        self._index = np.full(self.mask.shape, -1, dtype=np.int64)
        self._index[self.mask] = np.arange(len(self.ijk))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the grid."""
        return self.mask.shape

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-MNI affine of the grid."""
        return self.mask_img.affine

    @property
    def n_voxels(self) -> int:
        """Number of in-mask voxels."""
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
        ijk = nearest_voxel(xyz, self.affine)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=1)
        out = np.full(len(ijk), -1, dtype=np.int64)
        out[inside] = self._index[tuple(ijk[inside].T)]
        return out
