"""Resting-state functional connectivity (rs-FC) maps of the seeds.

The paper downloaded Neurosynth's seed rs-FC maps (Yeo/Buckner GSP, 1,000 subjects), thresholded
them at r > 0.2 and converted them to Z in SPM12. Those maps were never released
(neurosynth-web issue #122), so this module

* reads **user-supplied** maps when a folder is given (one NIfTI of r per seed, named like
  Neurosynth's ``functional_connectivity_<x>_<y>_<z>.nii.gz`` or simply ``<x>_<y>_<z>.nii.gz``);
* otherwise builds a clearly labelled **substitute**: the HCP group parcel-level FC matrix of the
  Schaefer-400 parcellation from BrainSpace's data files (Vos de Wael et al. 2020), the seed
  assigned to the parcel of its nearest conte69 vertex, that parcel's FC row painted onto the
  Schaefer-400 volume (``AS400Y17.nii.gz``; parcels matched by centroid with a Hungarian
  assignment, since the volume uses the 17-network order).

BrainSpace's four files (group FC matrix, conte69 parcellation, the two conte69 surfaces; 3.3 MB)
are registry entries under ``atlases/brainspace/`` (:mod:`analysis.fetch`, pinned to a BrainSpace
commit and checked by SHA-256), read with numpy and nibabel as BrainSpace's own
``load_group_fc("schaefer", 400)`` and ``load_parcellation("schaefer", 400, join=True)`` read them;
the BrainSpace package itself (and VTK, which it needs) is not required.

Both are thresholded at r > ``rsfc_r_threshold`` and converted to Z with Fisher's transform,
``Z = artanh(r) * sqrt(n - 3)`` with ``n = rsfc_n_subjects`` (the 1,000 subjects of Yeo et al.
2011; the paper does not say how SPM12 converted r to Z, so this is an assumption). The
substitute is cortical only: a seed farther than ``rsfc_max_vertex_mm`` from the cortical
surface (the cerebellar seed, ~12 mm) gets no map.

References
----------
Yeo BTT et al. (2011). J Neurophysiol 106:1125-1165. Schaefer A et al. (2018). Cereb Cortex
28:3095-3114. Vos de Wael R et al. (2020). BrainSpace. Commun Biol 3:103.
Van Essen DC et al. (2013). The WU-Minn Human Connectome Project. NeuroImage 80:62-79.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from analysis.characterisation.macm import img_to_vector
from analysis.fetch import fetch_file
from analysis.sdm.errors import DataError
from analysis.sdm.maps.space import ijk_to_mni

LGR = logging.getLogger(__name__)

SCHAEFER_VOLUME = "atlases/cbig_network_correspondence/AS400Y17.nii.gz"
BRAINSPACE = "atlases/brainspace"
GROUP_FC = f"{BRAINSPACE}/matrices/main_group/schaefer_400_mean_connectivity_matrix.csv"
PARCELLATION = f"{BRAINSPACE}/parcellations/schaefer_400_conte69.csv"
SURFACES = tuple(f"{BRAINSPACE}/surfaces/conte69_32k_{h}.gii" for h in ("lh", "rh"))
N_PARCELS = 400
N_VERTICES = 2 * 32492  # conte69 32k, both hemispheres
SUBSTITUTE_NOTE = ("SUBSTITUTE: HCP group parcel-level FC (brainspace, Schaefer-400, cortex only), "
                   "not Neurosynth's GSP-1000 voxel-wise rs-FC")


@dataclass
class RsfcMap:
    """One seed's connectivity map.

    Attributes
    ----------
    seed : tuple
    source : str
        ``"user"``, ``"hcp_substitute"`` or ``"none"``.
    z : numpy.ndarray or None
        Thresholded Z over Neurosynth's mask (0 below threshold); None when unavailable.
    note : str
        Provenance or why no map exists.
    parcel : int or None
        Substitute only: Schaefer-400 parcel of the seed (BrainSpace's conte69 labels).
    vertex_distance_mm : float or None
        Substitute only: distance from the seed to its nearest labelled conte69 vertex.
    n_parcels_above : int or None
        Substitute only: parcels with r above the threshold (seed parcel excluded).
    """

    seed: tuple
    source: str
    z: np.ndarray | None
    note: str
    parcel: int | None = None
    vertex_distance_mm: float | None = None
    n_parcels_above: int | None = None


def r_to_z(r: np.ndarray, threshold: float, n_subjects: int) -> np.ndarray:
    """Threshold r at ``> threshold`` and convert to Z = artanh(r) * sqrt(n - 3) (0 elsewhere)."""
    r = np.asarray(r, dtype=np.float64)
    out = np.zeros_like(r)
    keep = r > threshold
    out[keep] = np.arctanh(np.clip(r[keep], -1 + 1e-12, 1 - 1e-12)) * np.sqrt(n_subjects - 3)
    return out


def load_group_fc() -> np.ndarray:
    """BrainSpace's HCP group FC matrix of Schaefer-400 (discovery group), 400 x 400 r.

    Raises
    ------
    analysis.sdm.errors.DataError
        The file is not a 400 x 400 comma-separated matrix of numbers.
    """
    path = fetch_file(GROUP_FC)
    try:
        fc = np.loadtxt(path, dtype=np.float64, delimiter=",")
    except ValueError as exc:
        raise DataError(path, f"not a comma-separated numeric matrix: {exc}") from exc
    if fc.shape != (N_PARCELS, N_PARCELS):
        raise DataError(path, f"expected a {N_PARCELS} x {N_PARCELS} matrix, found {fc.shape}")
    return fc


def load_parcellation() -> np.ndarray:
    """Schaefer-400 label of each conte69 vertex, left then right (0 = medial wall).

    Raises
    ------
    analysis.sdm.errors.DataError
        The file is not one integer label in 0..400 per vertex of both hemispheres.
    """
    path = fetch_file(PARCELLATION)
    try:
        labels = np.loadtxt(path, dtype=np.int64)
    except ValueError as exc:
        raise DataError(path, f"not one integer label per line: {exc}") from exc
    if labels.shape != (N_VERTICES,):
        raise DataError(path, f"expected {N_VERTICES} vertex labels, found {labels.shape}")
    if labels.min() < 0 or labels.max() > N_PARCELS:
        raise DataError(path, f"labels must lie in 0..{N_PARCELS}, found "
                              f"{labels.min()}..{labels.max()}")
    return labels


def load_surface_xyz() -> np.ndarray:
    """Vertex coordinates (mm) of the conte69 32k surfaces (BrainSpace), left then right.

    Raises
    ------
    analysis.sdm.errors.DataError
        A surface file is not a GIfTI whose first data array holds n x 3 coordinates.
    """
    parts = []
    for rel in SURFACES:
        path = fetch_file(rel)
        try:
            xyz = np.asarray(nib.load(path).darrays[0].data, dtype=np.float64)
        except Exception as exc:  # nibabel raises several types
            raise DataError(path, f"not a readable GIfTI surface: {exc}") from exc
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise DataError(path, f"first data array is not n x 3 coordinates: {xyz.shape}")
        parts.append(xyz)
    return np.vstack(parts)


@lru_cache(maxsize=1)
def hcp_schaefer400() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HCP group FC (400 x 400 r), conte69 vertex labels (64,984; 0 = medial wall), vertex xyz."""
    fc, labels, xyz = load_group_fc(), load_parcellation(), load_surface_xyz()
    if len(labels) != len(xyz):
        raise DataError(PARCELLATION, f"{len(labels)} vertex labels for {len(xyz)} surface "
                                      f"vertices ({', '.join(SURFACES)})")
    return fc, labels, xyz


@lru_cache(maxsize=1)
def parcel_matching() -> tuple[np.ndarray, np.ndarray]:
    """Surface Schaefer-400 parcel (BrainSpace) -> AS400Y17 volume label, by centroid (Hungarian).

    Returns
    -------
    volume_label : numpy.ndarray, (401,)
        ``volume_label[p]`` = label in AS400Y17 of surface parcel ``p`` (index 0 unused).
    distance_mm : numpy.ndarray, (401,)
        Centroid distance of each matched pair.
    """
    _, labels, xyz = hcp_schaefer400()
    vimg = nib.load(fetch_file(SCHAEFER_VOLUME))
    vol = np.rint(np.asarray(vimg.dataobj)).astype(np.int64)
    ijk = np.argwhere(vol > 0)
    vlab = vol[tuple(ijk.T)]
    vxyz = ijk_to_mni(ijk, vimg.affine)
    n = 400
    surf_c = np.array([xyz[labels == p].mean(0) for p in range(1, n + 1)])
    cnt = np.bincount(vlab, minlength=n + 1)[1:, None]
    vol_c = np.stack([np.bincount(vlab, weights=vxyz[:, k], minlength=n + 1)[1:] for k in range(3)],
                     1) / np.maximum(cnt, 1)
    cost = np.linalg.norm(surf_c[:, None, :] - vol_c[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    out = np.zeros(n + 1, dtype=np.int64)
    dist = np.zeros(n + 1)
    out[rows + 1] = cols + 1
    dist[rows + 1] = cost[rows, cols]
    LGR.info("Schaefer-400 surface->volume matching: median centroid distance %.1f mm, 90th %.1f",
             np.median(dist[1:]), np.percentile(dist[1:], 90))
    return out, dist


def substitute_map(seed, cfg: dict) -> RsfcMap:
    """HCP parcel-level FC substitute for one seed (see module docstring).

    Parameters
    ----------
    seed : sequence of 3 floats
    cfg : dict
        ``characterisation`` section (``rsfc_r_threshold``, ``rsfc_n_subjects``,
        ``rsfc_max_vertex_mm``).
    """
    seed = tuple(float(v) for v in seed)
    fc, labels, xyz = hcp_schaefer400()
    lab = labels > 0
    tree = cKDTree(xyz[lab])
    dist, idx = tree.query(seed)
    parcel = int(labels[lab][idx])
    if dist > cfg["rsfc_max_vertex_mm"]:
        note = (f"no rs-FC substitute: seed is {dist:.1f} mm from the nearest cortical vertex "
                f"(> {cfg['rsfc_max_vertex_mm']} mm); the HCP parcel FC covers cortex only "
                "(e.g. cerebellum is not covered)")
        LGR.warning("rs-FC %s: %s", seed, note)
        return RsfcMap(seed, "none", None, note, parcel, float(dist), None)
    row = fc[parcel - 1].copy()
    row[parcel - 1] = -np.inf  # self-correlation (1) is not a connection
    zpar = r_to_z(row, cfg["rsfc_r_threshold"], cfg["rsfc_n_subjects"])
    zpar[parcel - 1] = zpar.max()  # the seed parcel itself: painted with the strongest value
    match, _ = parcel_matching()
    vimg = nib.load(fetch_file(SCHAEFER_VOLUME))
    vol = np.rint(np.asarray(vimg.dataobj)).astype(np.int64)
    lut = np.zeros(401)
    lut[match[1:]] = zpar
    zimg = nib.Nifti1Image(lut[vol].astype(np.float32), vimg.affine)
    n_above = int((row > cfg["rsfc_r_threshold"]).sum())
    return RsfcMap(seed, "hcp_substitute", img_to_vector(zimg), SUBSTITUTE_NOTE, parcel,
                   float(dist), n_above)


_NUM = r"(-?\d+(?:\.\d+)?)"


def find_user_map(folder: str | Path, seed) -> Path | None:
    """The NIfTI in ``folder`` whose name ends in ``<x>_<y>_<z>.nii[.gz]`` for this seed."""
    folder = Path(folder)
    pat = re.compile(rf"{_NUM}_{_NUM}_{_NUM}\.nii(\.gz)?$")
    for f in sorted(folder.glob("*.nii*")):
        m = pat.search(f.name)
        if m and np.allclose([float(m.group(i)) for i in (1, 2, 3)], seed):
            return f
    return None


def user_map(path: Path, seed, cfg: dict) -> RsfcMap:
    """A user-supplied r map (any grid; resampled to Neurosynth's), thresholded and Z-converted."""
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types
        raise DataError(path, f"not a readable NIfTI image: {exc}") from exc
    r = img_to_vector(img)
    if np.nanmax(np.abs(r)) > 1.0 + 1e-6:
        raise DataError(path, "values must be correlation coefficients r in [-1, 1]")
    z = r_to_z(np.nan_to_num(r), cfg["rsfc_r_threshold"], cfg["rsfc_n_subjects"])
    return RsfcMap(tuple(float(v) for v in seed), "user", z, f"user-supplied map {path.name}")


def rsfc_map(seed, cfg: dict, folder: str | Path | None = None) -> RsfcMap:
    """User map if ``folder`` has one for ``seed``, else the HCP substitute."""
    if folder is not None:
        f = find_user_map(folder, seed)
        if f is not None:
            return user_map(f, seed, cfg)
        LGR.info("no user rs-FC map for %s in %s; using the substitute", tuple(seed), folder)
    return substitute_map(seed, cfg)
