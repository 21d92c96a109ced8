"""Meta-regression of SDM-PSI maps on study covariates, reported at the result peaks.

He et al. (2024) regressed the pain-empathy maps on mean age, percentage of women and treatment
status (no significant effects). As in SDM-PSI's linear models (``mi_lm``), the design is
``X = [1, covariate]`` and the hypothesis is the covariate's slope; the slope map, its Rubin
variance and SDM-Z come from the engine (MetaNSUE MLE with the covariate, imputation,
random-effects meta-regression, Rubin's rules). Studies with a missing covariate value are left
out of that regression, listed in a warning and counted: the engine's one missing-value policy,
``SDMPSI(missing="drop")`` (:func:`analysis.sdm.estimator.complete_cases`); a fit with
covariates raises on a missing value unless asked to drop. The covariate is centred on its
mean, like Enge et al. (2021) did for SDM-PSI's ``age_mean_c``; the slope does not depend on
the centring. Inference at a peak is the
two-tailed normal p of the slope's SDM-Z; family-wise inference over the brain is by
Freedman-Lane permutation of studies (:mod:`analysis.sdm.inference.permutation`).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.stats import norm

from analysis.sdm.inference.clusters import threshold_clusters

LGR = logging.getLogger(__name__)

REGRESSION_COLUMNS = ["covariate", "n_studies", "n_missing", "cluster", "direction", "x", "y",
                      "z", "slope", "slope_se", "slope_z", "p_two_tailed",
                      "p_fwe_freedman_lane", "n_slope_clusters", "n_fwe_voxels"]


def covariate_design(studies: pd.DataFrame, covariate: str) -> tuple[np.ndarray, np.ndarray]:
    """Centred design ``[1, covariate]`` of the studies with a value, and which those are.

    The engine's one missing-value policy with ``missing="drop"``
    (:func:`analysis.sdm.estimator.complete_cases`: the studies without a value are left out and
    a :class:`~analysis.sdm.estimator.MissingCovariateWarning` lists them) and its design
    (:func:`analysis.sdm.estimator.design_matrix`: numeric columns as they are, text by dummy
    coding); ``SDMPSI(covariates=[covariate], hypothesis=[0, 1], missing="drop")`` fits the
    same regression from a study table.

    Parameters
    ----------
    studies : DataFrame
        Study table (:func:`analysis.sdm.inputs.studies.check_studies`): ``age``, ``female_pct``, ``treated``
        (0/1) or any numeric column.
    covariate : str
        The column.

    Returns
    -------
    X : ndarray (k_used, 2)
    keep : ndarray of bool (k,)
    """
    from analysis.sdm.estimator import complete_cases, design_matrix

    if covariate not in studies.columns:
        raise KeyError(f"covariate {covariate!r} is not a column of the study table")
    keep = complete_cases(studies, [covariate], missing="drop")
    x = pd.to_numeric(studies.loc[keep, covariate], errors="coerce")
    if keep.sum() < 3 or x.nunique() < 2:
        raise ValueError(f"covariate {covariate!r}: too few studies with distinct values "
                         f"({int(keep.sum())} with a value)")
    X, _ = design_matrix(studies[keep].reset_index(drop=True), [covariate])
    return X, keep


def slope_at_peaks(result, peaks: pd.DataFrame, covariate: str, n_missing: int,
                   perm=None, alpha: float = 0.05, **threshold_kwargs) -> pd.DataFrame:
    """Slope, SE, z and two-tailed p of a fitted meta-regression at every result peak.

    Parameters
    ----------
    result : MetaResult
        Fit with hypothesis on the slope (``maps["g"]`` = slope, ``maps["var"]``, ``maps["z"]``).
    peaks : DataFrame
        Main-analysis cluster peaks with ``cluster, direction, x, y, z, voxel``.
    covariate : str
    n_missing : int
        Studies left out for a missing value.
    perm : PermutationResult, optional
        Freedman-Lane permutation test of the slope (:func:`psi_permutation_test`); adds the
        FWE-corrected p of the slope's direction at each peak and the number of voxels with
        p_FWE < ``alpha`` (either direction).
    alpha : float
    **threshold_kwargs
        Thresholds for counting slope clusters anywhere in the brain (default: the paper's).

    Returns
    -------
    DataFrame
        :data:`REGRESSION_COLUMNS`, one row per peak (one row with empty peak columns when
        there are no peaks).
    """
    maps = result.maps
    n_cl = len(threshold_clusters(maps["z"], result.space, local_peaks=False,
                                  **threshold_kwargs).peaks())
    k = len(result.n1)
    n_fwe = np.nan
    if perm is not None:
        n_fwe = int(((perm.maps["p_voxel"] < alpha) | (perm.maps["p_voxel_neg"] < alpha)).sum())
    rows = []
    for r in peaks.itertuples(index=False):
        v = int(r.voxel)
        z = float(maps["z"][v])
        p_fwe = np.nan
        if perm is not None:
            p_fwe = float(perm.maps["p_voxel" if z >= 0 else "p_voxel_neg"][v])
        rows.append({"covariate": covariate, "n_studies": k, "n_missing": n_missing,
                     "cluster": int(r.cluster), "direction": r.direction, "x": r.x, "y": r.y,
                     "z": r.z, "slope": float(maps["g"][v]),
                     "slope_se": float(np.sqrt(maps["var"][v])), "slope_z": z,
                     "p_two_tailed": float(2 * norm.sf(abs(z))), "p_fwe_freedman_lane": p_fwe,
                     "n_slope_clusters": n_cl, "n_fwe_voxels": n_fwe})
    if not rows:
        rows.append({"covariate": covariate, "n_studies": k, "n_missing": n_missing,
                     "n_slope_clusters": n_cl, "n_fwe_voxels": n_fwe})
    return pd.DataFrame(rows, columns=REGRESSION_COLUMNS)
