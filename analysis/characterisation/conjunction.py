"""Conjunctions of connectivity and co-activation, their overlaps, clusters and Yeo-7 shares.

* **Conjunction** of one seed (paper, Methods: "merged the rs-FC thresholded maps with the
  meta-analytic co-activation maps"): voxels with Z > 0 in both the thresholded rs-FC map and the
  FDR-thresholded MACM; value = the smaller of the two (minimum statistic; Nichols et al. 2005).
* **Overlap** of two conjunctions (Figure 3C: the two "increase" seeds; 3F: the two "decrease"
  seeds): voxels > 0 in both, minimum value.
* **Cluster tables**: 26-connected components of > 0 voxels with at least
  ``conjunction_min_cluster_voxels`` voxels; peak (maximum) coordinate, AAL and Juelich labels of
  the peak (``analysis.labels``; Juelich = FSL's copy of the Anatomy-toolbox maps, which has no
  cingulate, frontopolar, temporal or cerebellar grey-matter areas: "no label" there), and the
  AAL breakdown of the cluster.
* **Yeo-7 share**: the share of a map's > 0 voxels in each Yeo et al. (2011) 7-network label of
  ``TY7.nii.gz`` (cortex only; the rest counted as "outside").

References
----------
Nichols T, Brett M, Andersson J, Wager T, Poline JB (2005). Valid conjunction inference with the
minimum statistic. NeuroImage 25:653-660. Yeo BTT et al. (2011). J Neurophysiol 106:1125-1165.
Eickhoff SB et al. (2005). NeuroImage 25:1325-1335.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from analysis.characterisation.macm import vector_to_img
from analysis.fetch import fetch_file
from analysis.sdm.maps.space import ijk_to_mni, nearest_voxel

LGR = logging.getLogger(__name__)

YEO7 = "atlases/cbig_network_correspondence/TY7.nii.gz"
OUTSIDE = "outside"


def conjunction(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Minimum-statistic conjunction of two non-negative-thresholded maps (None if one is None)."""
    if a is None or b is None:
        return None
    both = (a > 0) & (b > 0)
    return np.where(both, np.minimum(a, b), 0.0)


def clusters(vec: np.ndarray, min_voxels: int, label_atlases=("aal", "juelich")) -> pd.DataFrame:
    """Cluster table of the > 0 voxels of an in-mask vector.

    Parameters
    ----------
    vec : numpy.ndarray
        Map over Neurosynth's mask.
    min_voxels : int
        Smallest cluster reported.
    label_atlases : tuple of str
        Atlases of :mod:`analysis.labels` used to label each cluster's peak.

    Returns
    -------
    pandas.DataFrame
        ``cluster, voxels, x, y, z, peak_value, label_<atlas>..., aal_breakdown`` (largest first;
        the peak is the cluster's first voxel in C order among those of its largest value; the
        breakdown lists AAL regions holding >= 5 % of the cluster).
    """
    from analysis.labels import cluster_breakdown, label_coordinates

    img = vector_to_img(vec)
    vol = np.asarray(img.dataobj)
    lab, n = ndimage.label(vol > 0, structure=np.ones((3, 3, 3)))
    cols = ["cluster", "voxels", "x", "y", "z", "peak_value",
            *[f"label_{a}" for a in label_atlases], "aal_breakdown"]
    if n == 0:
        return pd.DataFrame(columns=cols)
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_voxels) + 1
    # the peak of a cluster is its first voxel in C order among those of its largest value, as
    # in analysis.sdm.inference.clusters: maps with plateaus (MACM z at the floor of p) have
    # ties, which ndimage.maximum_position breaks by the order of an unstable sort of the whole
    # volume (its result may change with NumPy's sort implementation; 0.15 s a call)
    flat = np.flatnonzero(lab)
    flat_lab, flat_val = lab.ravel()[flat], vol.ravel()[flat]
    rows = []
    for cid in keep:
        mine = flat_lab == cid
        pk = np.unravel_index(flat[mine][np.argmax(flat_val[mine])], vol.shape)
        xyz = ijk_to_mni(pk, img.affine)[0]
        row = {"voxels": int(sizes[cid - 1]), "x": int(round(xyz[0])), "y": int(round(xyz[1])),
               "z": int(round(xyz[2])), "peak_value": float(vol[pk])}
        for a in label_atlases:
            row[f"label_{a}"] = label_coordinates(xyz, a)[0]
        bd = cluster_breakdown(lab == cid, atlas="aal")
        bd = bd[bd["percent"] >= 5]
        row["aal_breakdown"] = "; ".join(f"{r.label} {r.percent:.0f}%" for r in bd.itertuples())
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("voxels", ascending=False, kind="stable")
    df.insert(0, "cluster", np.arange(1, len(df) + 1))
    return df[cols].reset_index(drop=True)


@lru_cache(maxsize=1)
def yeo7_vector() -> np.ndarray:
    """Yeo-7 labels (0 = none, 1..7) over Neurosynth's mask (TY7.nii.gz, same 2 mm grid)."""
    from analysis.characterisation.macm import img_to_vector

    img = nib.load(fetch_file(YEO7))
    vec = np.rint(img_to_vector(nib.Nifti1Image(np.asarray(img.dataobj), img.affine)))
    return vec.astype(np.int64)


def network_shares(vec: np.ndarray, names: list[str]) -> dict[str, float]:
    """Share of a map's > 0 voxels in each Yeo-7 network (and ``outside``), summing to 1.

    Parameters
    ----------
    vec : numpy.ndarray
        Map over Neurosynth's mask.
    names : list of str
        Network names in label order 1..7 (config ``yeo7_networks``; Yeo's standard order).
    """
    on = vec > 0
    n = int(on.sum())
    counts = np.bincount(yeo7_vector()[on], minlength=len(names) + 1)
    out = {OUTSIDE: counts[0] / n if n else 0.0}
    out.update({nm: counts[i + 1] / n if n else 0.0 for i, nm in enumerate(names)})
    return {k: float(v) for k, v in out.items()}


def seed_network(seed, names: list[str], radius_mm: float = 6.0) -> tuple[str, float]:
    """Yeo-7 network holding most of a ``radius_mm`` sphere around ``seed`` and its share."""
    from analysis.characterisation.databases import neurosynth_mask, sphere_offsets

    mimg = neurosynth_mask()
    pts = (nearest_voxel(seed, mimg.affine)[0] + sphere_offsets(radius_mm)).T
    img = nib.load(fetch_file(YEO7))
    vals = np.rint(np.asarray(img.dataobj)[tuple(pts)]).astype(int)
    counts = np.bincount(vals, minlength=len(names) + 1)
    best = int(np.argmax(counts))
    return (OUTSIDE if best == 0 else names[best - 1]), float(counts[best] / counts.sum())
