"""Thresholding and cluster tables of SDM-Z maps (He et al. 2024, Table 3).

The paper thresholds the SDM-PSI mean map at voxel p < 0.0025 (uncorrected, one-tailed per
direction), peak SDM-Z > 1 and cluster extent k > 10 voxels (Radua et al. 2012, Eur Psychiatry
27:605-611). Uncorrected p is one-tailed per direction as in SDM-PSI's ``uncorrp`` maps:
p+ = 1 - Phi(z) for increases (Patients > Controls), p- = Phi(z) for decreases (SDM-PSI's
``uncorrp`` and ``uncorrp_neg`` maps of Enge et al. 2021 are ``Phi(z)`` and ``Phi(-z)``). Any
other per-direction p map (e.g. voxel-FWE p = 1 - corrp_voxel) may be thresholded instead.

Clusters are connected components of supra-threshold voxels (``connectivity`` 6, 18 or 26; SDM's
report connectivity is not documented, see :func:`threshold_clusters`). The cluster peak is its
voxel of largest |SDM-Z|; local peaks are voxels that are maxima of |SDM-Z| in their 3x3x3
neighbourhood within the cluster and lie at least ``local_peak_distance_mm`` from every stronger
peak kept (greedy, strongest first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import norm

from analysis.sdm.maps.space import connectivity_structure, ijk_to_mni

LGR = logging.getLogger(__name__)

INCREASE = "Patients>Controls"
DECREASE = "Patients<Controls"
#: direction labels of a one-sample (or mixed) meta-analysis: the sign of the pooled effect
POSITIVE = "Positive"
NEGATIVE = "Negative"
TABLE_COLUMNS = ["cluster", "direction", "peak_type", "region", "aal_label", "cluster_voxels",
                 "x", "y", "z", "sdm_z", "p_voxel"]


@dataclass
class ClusterResult:
    """Clusters of a thresholded SDM-Z map.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per cluster peak (``peak_type == "cluster"``) followed by its local peaks
        (``"local"``); columns :data:`TABLE_COLUMNS`. Clusters are numbered 1.. in order:
        increases first, then decreases, each by decreasing size.
    labels : numpy.ndarray
        int32 vector over the voxels: cluster number, 0 outside the reported clusters.
    thresholded_z : numpy.ndarray
        float32 vector: SDM-Z inside the reported clusters, 0 elsewhere.
    params : dict
        Thresholds used.
    directions : tuple of str
        Labels of the positive and the negative direction (:func:`direction_labels`).
    """

    table: pd.DataFrame
    labels: np.ndarray
    thresholded_z: np.ndarray
    params: dict = field(default_factory=dict)
    directions: tuple[str, str] = (INCREASE, DECREASE)

    def peaks(self) -> pd.DataFrame:
        """Only the cluster peaks (one row per cluster), like the paper's Table 3."""
        return self.table[self.table["peak_type"] == "cluster"].reset_index(drop=True)

    def n_clusters(self, direction: str) -> int:
        """Number of clusters in one direction."""
        return int((self.peaks()["direction"] == direction).sum())


def direction_labels(n2) -> tuple[str, str]:
    """Labels of the positive and negative direction of a meta-analysis, from its design.

    A meta-analysis of two-sample studies only (every study with a control group) pools
    patient-control differences: ``("Patients>Controls", "Patients<Controls")``, as in He et
    al. (2024), Table 3. With any one-sample study (e.g. the task-activation studies of Enge et
    al. 2021) the pooled effect is no group difference and the directions are the sign of the
    effect: ``("Positive", "Negative")``.

    Parameters
    ----------
    n2 : array-like
        Control group sizes, one per study; NaN for a one-sample study
        (:func:`analysis.data_tables.load_studies`).

    Returns
    -------
    tuple of str
        ``(positive direction, negative direction)``.
    """
    n2 = np.asarray(n2, dtype=float)
    if n2.size and np.all(np.isfinite(n2)):
        return INCREASE, DECREASE
    return POSITIVE, NEGATIVE


#: the thresholds of He et al. (2024) and SDM-PSI's reports: one-tailed voxel p < 0.0025, peak
#: SDM-Z > 1, clusters of more than 10 voxels, local peaks at least 8 mm apart, 26-connectivity
#: (checked on Enge et al.'s SDM-PSI report, ``tests/test_clusters.py``)
THRESHOLDS = {"p_threshold": 0.0025, "peak_z": 1.0, "min_voxels": 11,
              "local_peak_distance_mm": 8.0, "connectivity": 26}


def one_tailed_p(z) -> tuple[np.ndarray, np.ndarray]:
    """One-tailed p of increases and of decreases: ``(1 - Phi(z), Phi(z))``."""
    z = np.asarray(z, dtype=float)
    return norm.sf(z), norm.cdf(z)


def _local_peaks(sz: np.ndarray, lab: np.ndarray, cid: int, xyz_of, min_dist: float):
    """Voxel indices (3-D) of the kept local peaks of cluster ``cid``, strongest first."""
    inside = lab == cid
    vals = np.where(inside, sz, -np.inf)
    # bounding box of the cluster (+1 voxel) keeps the maximum filter cheap
    sl = ndimage.find_objects(inside.astype(np.int32))[0]
    sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
    sub = vals[sl]
    mx = ndimage.maximum_filter(sub, size=3, mode="constant", cval=-np.inf)
    cand = np.argwhere((sub == mx) & np.isfinite(sub))
    cand += np.array([s.start for s in sl])
    v = sz[tuple(cand.T)]
    order = np.lexsort((np.ravel_multi_index(tuple(cand.T), sz.shape), -v))
    cand = cand[order]
    xyz = xyz_of(cand)
    keep: list[int] = []
    for n in range(len(cand)):
        if not keep or np.min(np.linalg.norm(xyz[keep] - xyz[n], axis=1)) >= min_dist:
            keep.append(n)
    return cand[keep]


def threshold_clusters(
    z_vec,
    space,
    p_threshold: float | None = None,
    peak_z: float | None = None,
    min_voxels: int | None = None,
    local_peak_distance_mm: float | None = None,
    connectivity: int | None = None,
    p_vecs: tuple | None = None,
    local_peaks: bool = True,
    labeler=None,
    directions: tuple[str, str] = (INCREASE, DECREASE),
) -> ClusterResult:
    """Threshold an SDM-Z map in both directions and tabulate clusters and peaks.

    Parameters
    ----------
    z_vec : array-like
        SDM-Z over the voxels of ``space``.
    space : analysis.sdm.maps.space.MaskSpace
        The voxel space.
    p_threshold : float, optional
        Voxel threshold: a voxel is supra-threshold when its one-tailed p < ``p_threshold``
        (default :data:`THRESHOLDS`: 0.0025).
    peak_z : float, optional
        A cluster is reported only when its peak |SDM-Z| > ``peak_z`` (default 1).
    min_voxels : int, optional
        Minimum cluster size in voxels (default 11, i.e. k > 10).
    local_peak_distance_mm : float, optional
        Minimum distance between reported peaks of one cluster (default 8 mm).
    connectivity : {6, 18, 26}, optional
        Voxel neighbourhood of cluster formation (default 26).
    p_vecs : tuple of two arrays, optional
        Per-direction p maps ``(p_increase, p_decrease)`` to threshold instead of the
        one-tailed uncorrected p of ``z_vec`` (e.g. ``1 - corrp_voxel``, ``1 - corrp_voxel_neg``).
    local_peaks : bool
        Whether to list local peaks below each cluster peak.
    labeler : callable, optional
        ``labeler(xyz) -> DataFrame`` giving, for the peaks' MNI coordinates (n, 3), the
        ``region`` and ``aal_label`` columns (e.g. :func:`analysis.labels.aal_labeler`); left
        empty without one.
    directions : tuple of str
        Labels of the positive and the negative direction in the ``direction`` column
        (default: patients vs controls; :func:`direction_labels` gives them from the design).

    Returns
    -------
    ClusterResult
    """
    increase, decrease = (str(d) for d in directions)
    if increase == decrease:
        raise ValueError(f"the two direction labels must differ, got {directions!r}")
    params = dict(THRESHOLDS)
    given = {"p_threshold": p_threshold, "peak_z": peak_z, "min_voxels": min_voxels,
             "local_peak_distance_mm": local_peak_distance_mm, "connectivity": connectivity}
    params.update({k: v for k, v in given.items() if v is not None})
    z = np.asarray(z_vec, dtype=float)
    if z.shape != (space.n_voxels,):
        raise ValueError(f"z map has shape {z.shape}, the space has {space.n_voxels} voxels")
    z = np.where(np.isfinite(z), z, 0.0)
    p_pos, p_neg = one_tailed_p(z) if p_vecs is None else (np.asarray(p) for p in p_vecs)
    struct = connectivity_structure(params["connectivity"])
    aff = space.affine

    def xyz_of(ijk):
        return ijk_to_mni(ijk, aff)

    rows: list[dict] = []
    labels = np.zeros(space.n_voxels, dtype=np.int32)
    next_id = 1
    for direction, sign, p in ((increase, 1.0, p_pos), (decrease, -1.0, p_neg)):
        supra = (np.asarray(p) < params["p_threshold"]) & (sign * z > 0)
        if not supra.any():
            continue
        lab, n = ndimage.label(space.to_volume(supra.astype(np.uint8)) > 0, structure=struct)
        idx = np.arange(1, n + 1)
        sz = space.to_volume(sign * z, fill=-np.inf)
        # size and peak of every component from its voxels only (ndimage.maximum with an
        # index sorts the whole volume's labels: 0.15 s a call)
        in_lab = lab > 0
        lab_v = lab[in_lab]
        sizes = np.bincount(lab_v, minlength=n + 1)[1:]
        peaks = np.full(n, -np.inf)
        np.maximum.at(peaks, lab_v - 1, sz[in_lab].astype(float))
        ok = (sizes >= params["min_voxels"]) & (peaks > params["peak_z"])
        # order: size desc, then peak desc, then lowest label for determinism
        order = np.lexsort((idx, -peaks, -sizes))
        for c in order[ok[order]]:
            cid = idx[c]
            if local_peaks:
                pk = _local_peaks(sz, lab, cid, xyz_of, params["local_peak_distance_mm"])
            else:
                pos = np.argwhere(lab == cid)
                pk = pos[[np.argmax(sz[tuple(pos.T)])]]
            xyz = np.rint(xyz_of(pk)).astype(int)
            vox = space._index[tuple(pk.T)]
            for n_pk, (coord, v) in enumerate(zip(xyz, vox, strict=True)):
                rows.append({
                    "cluster": next_id, "direction": direction,
                    "peak_type": "cluster" if n_pk == 0 else "local",
                    "cluster_voxels": int(sizes[c]), "x": coord[0], "y": coord[1], "z": coord[2],
                    "sdm_z": float(z[v]), "p_voxel": float(np.asarray(p)[v]), "_vox": int(v),
                })
            labels[(lab == cid)[space.mask]] = next_id
            next_id += 1
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS + ["_vox"])
    if labeler is not None and len(table):
        extra = labeler(table[["x", "y", "z"]].to_numpy(dtype=float))
        for col in extra.columns:
            table[col] = extra[col].to_numpy()
    table = table.astype({"cluster": int, "cluster_voxels": int, "x": int, "y": int, "z": int})
    thr_z = np.where(labels > 0, z, 0.0).astype(np.float32)
    LGR.info("clusters: %d increase, %d decrease (p < %g, peak z > %g, k >= %d)",
             int((table.loc[table.peak_type == "cluster", "direction"] == increase).sum()),
             int((table.loc[table.peak_type == "cluster", "direction"] == decrease).sum()),
             params["p_threshold"], params["peak_z"], params["min_voxels"])
    return ClusterResult(table.rename(columns={"_vox": "voxel"}), labels, thr_z, params,
                         directions=(increase, decrease))


def values_at_peaks(table: pd.DataFrame, maps: dict, space=None) -> pd.DataFrame:
    """Add the value of each named map at every peak of a cluster table.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`threshold_clusters` (uses its ``voxel`` column, or ``x, y, z`` with
        ``space``).
    maps : dict
        Column name -> vector over the voxels (e.g. ``{"hedges_g": g, "i2": i2}``).
    space : MaskSpace, optional
        Needed when ``table`` has no ``voxel`` column.

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with one new column per map.
    """
    out = table.copy()
    if "voxel" in out.columns:
        vox = out["voxel"].to_numpy(dtype=np.int64)
    else:
        vox = space.voxel_index(out[["x", "y", "z"]].to_numpy())
    for name, vec in maps.items():
        vec = np.asarray(vec, dtype=float)
        out[name] = np.where(vox >= 0, vec[np.clip(vox, 0, None)], np.nan)
    return out
