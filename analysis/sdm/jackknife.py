"""Jackknife (leave-one-out) sensitivity of SDM-PSI clusters, and re-fits on study subsets.

Radua & Mataix-Cols (2009, Br J Psychiatry 195:393-402) and the SDM manual ("Jackknife
sensitivity analysis") repeat the mean analysis k times, each time discarding one study; a
cluster that survives in all or most of the k analyses is "highly replicable". He et al.
(2024) report the same for their 11 studies and additionally
leave out one disorder at a time.

The study maps (bounds) do not depend on which other studies are analysed, so pre-processing is
done once and every subset is re-fitted from its rows of the bound maps with the engine
(:meth:`analysis.sdm.estimator.SDMPSI.fit_bounds`: MetaNSUE MLE, imputation, random-effects
fits with the estimator's heterogeneity estimator, Rubin).
A base cluster *survives* an analysis when the analysis' map, thresholded exactly like the
main analysis (:func:`analysis.sdm.clusters.threshold_clusters`), has a reported cluster of the
same direction that overlaps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from analysis.sdm.clusters import threshold_clusters
from analysis.sdm.progress import progress as progress_bar

LGR = logging.getLogger(__name__)

JACKKNIFE_COLUMNS = ["analysis", "left_out", "n_studies", "cluster", "direction", "x", "y", "z",
                     "survives", "peak_survives", "overlap_voxels", "z_at_peak"]


def leave_one_out_sets(studies: list[str]) -> dict[str, list[str]]:
    """``{"without <study>": [the other studies]}`` for every study."""
    return {s: [t for t in studies if t != s] for s in studies}


def leave_group_out_sets(studies: list[str], groups: list[str]) -> dict[str, list[str]]:
    """``{<group>: [studies not in that group]}`` for every group (e.g. disorder)."""
    if len(groups) != len(studies):
        raise ValueError(f"{len(groups)} group labels for {len(studies)} studies")
    out = {}
    for g in dict.fromkeys(groups):
        keep = [s for s, gg in zip(studies, groups, strict=True) if gg != g]
        if keep:
            out[g] = keep
    return out


def refit_subsets(fit: Callable[[np.ndarray], object], studies: list[str],
                  subsets: dict[str, list[str]], progress: bool = False,
                  cache: dict | None = None) -> dict[str, object]:
    """Fit every subset of studies, each distinct set of studies once.

    Parameters
    ----------
    fit : callable
        ``fit(index_array) -> result`` with ``result.maps["z"]`` (e.g. a closure over the
        pre-processed bounds and :meth:`SDMPSI.fit_bounds`).
    studies : list of str
        All study ids, in the order of the bound maps.
    subsets : dict
        Name -> studies to keep.
    progress : bool
        Report progress.
    cache : dict, optional
        Fits by sorted study indices, shared between calls: a set fitted before is not fitted
        again (e.g. leaving out a disorder that has one study is leaving out that study).

    Returns
    -------
    dict
        Name -> result.
    """
    pos = {s: i for i, s in enumerate(studies)}
    cache = {} if cache is None else cache
    out = {}
    for name, keep in progress_bar(subsets.items(), desc="re-fits", unit="fit",
                                   disable=not progress, logger=LGR):
        unknown = set(keep) - set(pos)
        if unknown:
            raise ValueError(f"subset {name!r} names unknown studies {sorted(unknown)}")
        idx = np.array(sorted(pos[s] for s in keep), dtype=np.int64)
        key = tuple(idx.tolist())
        if key in cache:
            LGR.info("re-fit %s (%d studies): the same studies as an earlier re-fit", name,
                     len(idx))
        else:
            LGR.info("re-fit %s (%d studies)", name, len(idx))
            cache[key] = fit(idx)
        out[name] = cache[key]
    return out


def cluster_survival(base_labels: np.ndarray, base_table: pd.DataFrame, z_maps: dict,
                     space, analysis: str = "leave-one-out", n_studies: dict | None = None,
                     **threshold_kwargs) -> pd.DataFrame:
    """Whether each base cluster survives in each re-analysis.

    Parameters
    ----------
    base_labels : ndarray (V,)
        Cluster numbers of the main analysis (``ClusterResult.labels``).
    base_table : DataFrame
        Cluster peaks of the main analysis (``ClusterResult.peaks()``: ``cluster, direction,
        x, y, z, sdm_z, voxel``); a re-analysis cluster is of the same direction when its peak
        SDM-Z has the sign of ``sdm_z``.
    z_maps : dict
        Re-analysis name -> SDM-Z vector.
    space : MaskSpace
    analysis : str
        Label of this family of re-analyses (``leave-one-out``, ``leave-one-disorder-out``).
    n_studies : dict, optional
        Re-analysis name -> number of studies.
    **threshold_kwargs
        Passed to :func:`threshold_clusters` (defaults: the configured thresholds).

    Returns
    -------
    DataFrame
        One row per (re-analysis, base cluster): :data:`JACKKNIFE_COLUMNS`.
    """
    rows = []
    base_labels = np.asarray(base_labels)
    for name, z in z_maps.items():
        res = threshold_clusters(z, space, local_peaks=False, **threshold_kwargs)
        lab = res.labels
        # the direction of a cluster is the sign of its peak SDM-Z, whatever its label
        signs = dict(zip(res.peaks()["cluster"], np.sign(res.peaks()["sdm_z"]), strict=True))
        for r in base_table.itertuples(index=False):
            in_base = base_labels == r.cluster
            same_dir = np.isin(lab, [c for c, s in signs.items() if s == np.sign(r.sdm_z)])
            overlap = int((in_base & same_dir).sum())
            rows.append({
                "analysis": analysis, "left_out": name,
                "n_studies": (n_studies or {}).get(name, np.nan), "cluster": int(r.cluster),
                "direction": r.direction, "x": r.x, "y": r.y, "z": r.z,
                "survives": overlap > 0, "peak_survives": bool(same_dir[int(r.voxel)]),
                "overlap_voxels": overlap, "z_at_peak": float(z[int(r.voxel)]),
            })
    return pd.DataFrame(rows, columns=JACKKNIFE_COLUMNS)


def survival_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (analysis family, cluster): in how many re-analyses the cluster survives."""
    if table.empty:
        return pd.DataFrame(columns=["analysis", "cluster", "direction", "x", "y", "z",
                                     "n_analyses", "n_survive", "n_peak_survive", "failed_without"])
    # boolean columns (an empty family concatenated to the table leaves them of object dtype)
    table = table.astype({"survives": bool, "peak_survives": bool})
    g = table.groupby(["analysis", "cluster", "direction", "x", "y", "z"], sort=False)
    out = g.agg(n_analyses=("survives", "size"), n_survive=("survives", "sum"),
                n_peak_survive=("peak_survives", "sum")).reset_index()
    failed = g.apply(lambda d: ";".join(d.loc[~d["survives"], "left_out"].astype(str)),
                     include_groups=False)
    out["failed_without"] = failed.to_numpy()
    return out
