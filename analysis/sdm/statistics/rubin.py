"""Rubin's rules applied to the random-effects fits of ``m`` imputed data sets, per voxel.

After the ``metansue`` R package (``.pool.var``, ``.pool.cov``, ``.pool.chi2``) and
SDM-PSI (Albajes-Eizagirre et al. 2019). The rules themselves are those of the statistics core
(:mod:`analysis.sdm.statistics.pooling`, re-exported here):

- coefficient: mean over imputations; variance: within + (1 + 1/m) between (Rubin 1987);
- SDM-Z = coef / sqrt(var) (normal reference);
- tau2 = (mean sqrt(tau2_j))^2, I2 = (mean sqrt(I2_j))^2, H2 = 1 / (1 - I2);
- Q: D2 pooling of chi-square statistics (Li, Meng, Raghunathan & Rubin 1991), converted back
  to a chi-square with the same p value.

References
----------
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
Li KH, Meng XL, Raghunathan TE, Rubin DB (1991). Significance levels from repeated p-values
with multiply-imputed data. Statistica Sinica 1:65-92.
"""

from __future__ import annotations

import numpy as np

from analysis.sdm.statistics.hypothesis import contrast, hypothesis_row
from analysis.sdm.statistics.pooling import (
    pool_chi2,
    pool_chi2_moments,
    pool_sqrt_mean,
    rubin_pool,
    rubin_pool_cov,
)

__all__ = ["pool_chi2", "pool_chi2_moments", "pool_cov", "pool_fits", "pool_scalar",
           "pool_sqrt_mean"]


def pool_scalar(est, var) -> tuple[np.ndarray, np.ndarray]:
    """Rubin pooling of a scalar estimate over axis 0
    (:func:`analysis.sdm.statistics.pooling.rubin_pool`).

    Parameters
    ----------
    est, var : array-like, shape (m, ...)
        Per-imputation estimates and their (within) variances.

    Returns
    -------
    mean, total_var : ndarray, shape (...)
        ``mean_j est_j`` and ``mean_j var_j + (1 + 1/m) var_j(est_j)`` (ddof 1).
    """
    return rubin_pool(np.asarray(est, dtype=float), np.asarray(var, dtype=float))


#: Rubin pooling of coefficient vectors and covariance matrices
pool_cov = rubin_pool_cov


def pool_fits(fits: dict, C=None) -> dict:
    """Pool per-imputation random-effects fits (leading axis m) into SDM's maps.

    Parameters
    ----------
    fits : dict
        Output of :func:`analysis.sdm.statistics.random_effects.fit_random_effects` on (m, k, V) input:
        ``beta`` (m, V, p), ``cov`` (m, V, p, p), ``tau2``, ``Q``, ``I2`` (m, V), ``df``.
    C : array-like, shape (p,), optional
        Hypothesis row (default: the first coefficient).

    Returns
    -------
    dict of (V,) arrays
        ``g`` (pooled C beta), ``var`` (Rubin variance), ``z``, ``tau2``, ``i2`` (fraction),
        ``h2``, ``q`` (chi-square-equivalent pooled Q), ``q_p`` and ``df`` (int).
    """
    coef_j, var_j = contrast(fits["beta"], fits["cov"],
                             hypothesis_row(C, fits["beta"].shape[-1]))
    g, var = rubin_pool(coef_j, var_j)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = g / np.sqrt(var)
    i2 = np.clip(pool_sqrt_mean(fits["I2"]), 0.0, 1.0 - 1e-12)
    qp = pool_chi2(fits["Q"], fits["df"])
    return {"g": g, "var": var, "z": z, "tau2": pool_sqrt_mean(fits["tau2"]), "i2": i2,
            "h2": 1.0 / (1.0 - i2), "q": qp["Q"], "q_p": qp["p"], "df": fits["df"]}
