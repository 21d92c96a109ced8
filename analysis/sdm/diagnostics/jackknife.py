"""Jackknife (leave-one-out) sensitivity of SDM-PSI clusters, and re-fits on study subsets.

Radua & Mataix-Cols (2009, Br J Psychiatry 195:393-402) and the SDM manual ("Jackknife
sensitivity analysis") repeat the mean analysis k times, each time discarding one study; a
cluster that survives in all or most of the k analyses is "highly replicable". He et al.
(2024) report the same for their 11 studies and additionally
leave out one disorder at a time. :class:`Jackknife` is the transformer of a fitted result
(leave one study out, or one group), as NiMARE's ``diagnostics.Jackknife``.

The study maps (bounds) do not depend on which other studies are analysed, so pre-processing is
done once and every subset is re-fitted from its rows of the bound maps with the engine
(:meth:`analysis.sdm.estimator.SDMPSI.fit_bounds`: MetaNSUE MLE, imputation, random-effects
fits with the estimator's heterogeneity estimator, Rubin).
A base cluster *survives* an analysis when the analysis' map, thresholded exactly like the
main analysis (:func:`analysis.sdm.inference.clusters.threshold_clusters`), has a reported cluster of the
same direction that overlaps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import numpy as np
import pandas as pd

from analysis.sdm.base import ParamsMixin
from analysis.sdm.estimator import copy_result
from analysis.sdm.inference.clusters import THRESHOLDS, direction_labels, threshold_clusters
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


def _group_labels(groups, result) -> tuple[list[str], str]:
    """One group label per study of ``result`` and the family's name, from ``groups``."""
    studies = list(result.bounds.studies)
    if isinstance(groups, str):
        table = getattr(result, "study_table", None)
        if table is None or groups not in table.columns:
            raise ValueError(f"groups={groups!r}: the result has no study table with that "
                             f"column (fit with SDMPSI.fit or fit_preprocessed(bounds, "
                             f"study_table)), or pass a mapping study -> group")
        labels = table.set_index("study").loc[studies, groups].astype(str)
        return list(labels), groups
    if isinstance(groups, (Mapping, pd.Series)):
        name = groups.name if isinstance(groups, pd.Series) and groups.name else "group"
        lookup = dict(groups.items())
        absent = [s for s in studies if s not in lookup]
        if absent:
            raise ValueError(f"groups: no group for the studies {absent}")
        return [str(lookup[s]) for s in studies], str(name)
    labels = [str(g) for g in groups]
    if len(labels) != len(studies):
        raise ValueError(f"groups: {len(labels)} labels for the {len(studies)} studies of the "
                         f"result")
    return labels, "group"


class Jackknife(ParamsMixin):
    """Leave-one-study-out (or leave-one-group-out) sensitivity of the clusters of a fit.

    Every study (or every group of studies) is left out in turn and the model re-fitted from
    the result's bound maps with the estimator that produced it (each distinct set of studies
    once); each cluster of the full analysis "survives" a re-fit when a same-direction cluster
    overlaps it. The SDM manual's jackknife sensitivity analysis (Radua & Mataix-Cols 2009),
    as NiMARE's ``diagnostics.Jackknife`` transforms a result (Salo et al. 2023); He et al.
    (2024) also left out one disorder at a time (``groups="disorder"``).

    Parameters
    ----------
    groups : None, str, mapping or sequence
        ``None`` (default): leave out one study at a time (family ``"leave-one-out"``). A
        column of the result's study table (e.g. ``"disorder"``; family
        ``"leave-one-disorder-out"``), a mapping (dict, or a pandas Series indexed by study)
        from study to group (family named by the Series' name, else ``"group"``), or one label
        per study of the result: leave out one group at a time.
    p_threshold, peak_z, min_voxels, local_peak_distance_mm, connectivity : optional
        Thresholds of :func:`analysis.sdm.inference.clusters.threshold_clusters` (default
        :data:`analysis.sdm.inference.clusters.THRESHOLDS`).
    progress : bool
        Show a progress bar over the re-fits.

    Notes
    -----
    :meth:`transform` adds the tables ``jackknife`` (one row per re-fit and cluster:
    :data:`analysis.sdm.diagnostics.jackknife.JACKKNIFE_COLUMNS`) and ``jackknife_summary`` to the result
    it returns, and an unfitted copy of itself to ``diagnostics``. A result that already has a
    ``jackknife`` table (e.g. leave-one-study-out, then leave-one-disorder-out) gets the new
    family's rows appended, and the summary covers every family. The transformer keeps no
    state.

    References
    ----------
    Radua J, Mataix-Cols D (2009). Voxel-wise meta-analysis of grey matter changes in
    obsessive-compulsive disorder. Br J Psychiatry 195:393-402.
    Salo T et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture
    Neuro 3. doi:10.52294/001c.87681.
    """

    def __init__(self, groups=None, p_threshold: float = THRESHOLDS["p_threshold"],
                 peak_z: float = THRESHOLDS["peak_z"],
                 min_voxels: int = THRESHOLDS["min_voxels"],
                 local_peak_distance_mm: float = THRESHOLDS["local_peak_distance_mm"],
                 connectivity: int = THRESHOLDS["connectivity"], progress: bool = False):
        self.groups = groups
        self.p_threshold = p_threshold
        self.peak_z = peak_z
        self.min_voxels = min_voxels
        self.local_peak_distance_mm = local_peak_distance_mm
        self.connectivity = connectivity
        self.progress = progress

    def _thresholds(self) -> dict:
        return {"p_threshold": float(self.p_threshold), "peak_z": float(self.peak_z),
                "min_voxels": int(self.min_voxels),
                "local_peak_distance_mm": float(self.local_peak_distance_mm),
                "connectivity": int(self.connectivity)}

    def transform(self, result):
        """A copy of ``result`` with the jackknife tables (see Notes).

        Parameters
        ----------
        result : MetaResult
            A mean-model fit that kept its bound maps (:meth:`SDMPSI.fit` or
            :meth:`SDMPSI.fit_preprocessed`).

        Returns
        -------
        MetaResult
            A new result; ``result`` is not modified.
        """
        est, bounds = getattr(result, "estimator", None), getattr(result, "bounds", None)
        if est is None or bounds is None:
            raise ValueError("the result has no estimator or bound maps (use SDMPSI.fit or "
                             "SDMPSI.fit_preprocessed)")
        if result.X.shape[1] > 1:
            raise ValueError("the jackknife re-fits the mean model only (no covariates)")
        thr = self._thresholds()
        base = threshold_clusters(result.maps["z"], result.space, local_peaks=False,
                                  directions=direction_labels(bounds.n2), **thr)
        studies = list(bounds.studies)
        if self.groups is None:
            subsets, family = leave_one_out_sets(studies), "leave-one-out"
        else:
            labels, name = _group_labels(self.groups, result)
            subsets = leave_group_out_sets(studies, labels)
            family = f"leave-one-{name}-out"
        refit = est._parameter_copy().set_params(keep_imputations=False, progress=False)

        noise = getattr(result, "noise", None)  # the fit's noise fields, drawn once

        def fit(idx):
            return refit.fit_bounds(bounds.lower[idx], bounds.upper[idx], bounds.n1[idx],
                                    bounds.n2[idx], result.space,
                                    studies=[studies[i] for i in idx], noise=noise)

        # subsets re-fitted by an earlier jackknife of this result are reused (keyed by their
        # studies; the refit cache of :func:`refit_subsets` is keyed by positions)
        done = getattr(result, "jackknife_refits", None) or {}
        pos = {s: i for i, s in enumerate(studies)}
        cache = {tuple(sorted(pos[s] for s in key)): fit_ for key, fit_ in done.items()
                 if all(s in pos for s in key)}
        fits = refit_subsets(fit, studies, subsets, progress=self.progress, cache=cache)
        table = cluster_survival(base.labels, base.peaks(),
                                    {k: r.maps["z"] for k, r in fits.items()}, result.space,
                                    family, {k: len(r.n1) for k, r in fits.items()}, **thr)
        if "jackknife" in result.tables:
            table = pd.concat([result.tables["jackknife"], table], ignore_index=True)
        out = copy_result(result)
        out.jackknife_refits = dict(done)
        for key, fit_ in cache.items():  # new re-fits: keep the z map and the sample sizes
            names = tuple(sorted(studies[i] for i in key))
            if names not in done:
                out.jackknife_refits[names] = SimpleNamespace(maps={"z": fit_.maps["z"]},
                                                              n1=fit_.n1)
        out.tables["jackknife"] = table
        out.tables["jackknife_summary"] = survival_summary(table)
        out.diagnostics.append(self._parameter_copy())
        return out
