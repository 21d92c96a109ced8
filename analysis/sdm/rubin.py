"""Rubin's rules: combining the meta-analyses of ``m`` imputed data sets, per voxel.

After the ``metansue`` R package (``.pool.var``, ``.pool.cov``, ``.pool.chi2``) and
SDM-PSI (Albajes-Eizagirre et al. 2019: "SDM-PSI uses Rubin's rules to combine the coefficients
of the model, their covariance and the heterogeneity statistics I and Q"):

- coefficient: mean over imputations; variance: within + (1 + 1/m) between (Rubin 1987);
- SDM-Z = coef / sqrt(var) (normal reference);
- tau2 = (mean sqrt(tau2_j))^2, I2 = (mean sqrt(I2_j))^2, H2 = 1 / (1 - I2);
- Q: D2 pooling of chi-square statistics (Li, Meng, Raghunathan & Rubin 1991), converted back
  to a chi-square with the same p value ("For convenience, SDM-PSI converts FQ back into a Q").

References
----------
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
Li KH, Meng XL, Raghunathan TE, Rubin DB (1991). Significance levels from repeated p-values
with multiply-imputed data. Statistica Sinica 1:65-92.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def pool_scalar(est, var) -> tuple[np.ndarray, np.ndarray]:
    """Rubin pooling of a scalar estimate over axis 0.

    Parameters
    ----------
    est, var : ndarray, shape (m, ...)
        Per-imputation estimates and their (within) variances.

    Returns
    -------
    mean, total_var : ndarray, shape (...)
        ``mean_j est_j`` and ``mean_j var_j + (1 + 1/m) var_j(est_j)`` (ddof 1).
    """
    est = np.asarray(est, dtype=float)
    var = np.asarray(var, dtype=float)
    m = est.shape[0]
    between = est.var(axis=0, ddof=1) if m > 1 else np.zeros(est.shape[1:])
    return est.mean(axis=0), var.mean(axis=0) + (1.0 + 1.0 / m) * between


def pool_cov(beta, cov) -> tuple[np.ndarray, np.ndarray]:
    """Rubin pooling of coefficient vectors and covariance matrices.

    Parameters
    ----------
    beta : ndarray, shape (m, ..., p)
    cov : ndarray, shape (m, ..., p, p)

    Returns
    -------
    beta_bar (..., p), total_cov (..., p, p)
        ``mean cov_j + (1 + 1/m) * sample covariance of beta_j``.
    """
    beta = np.asarray(beta, dtype=float)
    m = beta.shape[0]
    bbar = beta.mean(axis=0)
    d = beta - bbar
    between = np.einsum("m...p,m...q->...pq", d, d) / max(m - 1, 1)
    return bbar, np.asarray(cov, dtype=float).mean(axis=0) + (1.0 + 1.0 / m) * between


def pool_sqrt_mean(x) -> np.ndarray:
    """``(mean_j sqrt(x_j))^2`` over axis 0 (pooling of tau2 and I2 via tau and I)."""
    return np.sqrt(np.maximum(np.asarray(x, dtype=float), 0.0)).mean(axis=0) ** 2


def pool_chi2_moments(q_mean, sqrt_q_var, m: int, df: int) -> dict:
    """D2 pooling from ``mean_j Q_j`` and ``var_j sqrt(Q_j)`` (ddof 1); see :func:`pool_chi2`."""
    q_mean = np.asarray(q_mean, dtype=float)
    if df <= 0:
        zeros = np.zeros(q_mean.shape)
        return {"F": zeros, "df2": zeros + np.inf, "p": zeros + 1.0, "Q": zeros}
    r = (1.0 + 1.0 / m) * np.asarray(sqrt_q_var, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d2 = (q_mean / df - (m + 1.0) / (m - 1.0) * r) / (1.0 + r)
        df2 = (m - 1.0) / df ** (3.0 / m) * (1.0 + 1.0 / r) ** 2
    d2 = np.maximum(d2, 0.0)
    df2 = np.where(np.isfinite(df2), df2, 1e12)
    p = stats.f.sf(d2, df, df2)
    return {"F": d2, "df2": df2, "p": p, "Q": stats.chi2.isf(p, df)}


def pool_chi2(q, df: int) -> dict:
    """D2 pooling of chi-square statistics ``q`` (m, ...) with ``df`` degrees of freedom.

    Returns
    -------
    dict
        ``F`` (D2), ``df2``, ``p`` (P(F_{df, df2} > D2)) and ``Q``: the chi-square(df) quantile
        with the same upper-tail probability.
    """
    q = np.maximum(np.asarray(q, dtype=float), 0.0)
    return pool_chi2_moments(q.mean(axis=0), np.sqrt(q).var(axis=0, ddof=1), q.shape[0], df)


def pool_fits(fits: dict, C=None) -> dict:
    """Pool per-imputation random-effects fits (leading axis m) into SDM's maps.

    Parameters
    ----------
    fits : dict
        Output of :func:`analysis.sdm.random_effects.fit_random_effects` on (m, k, V) input:
        ``beta`` (m, V, p), ``cov`` (m, V, p, p), ``tau2``, ``Q``, ``I2`` (m, V), ``df``.
    C : array-like, shape (p,), optional
        Hypothesis row (default: the first coefficient).

    Returns
    -------
    dict of (V,) arrays
        ``g`` (pooled C beta), ``var`` (Rubin variance), ``z``, ``tau2``, ``i2`` (fraction),
        ``h2``, ``q`` (chi-square-equivalent pooled Q), ``q_p`` and ``df`` (int).
    """
    beta = fits["beta"]
    p = beta.shape[-1]
    C = np.eye(p)[0] if C is None else np.asarray(C, dtype=float).ravel()
    coef_j = beta @ C
    var_j = np.einsum("p,...pq,q->...", C, fits["cov"], C)
    g, var = pool_scalar(coef_j, var_j)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = g / np.sqrt(var)
    i2 = np.clip(pool_sqrt_mean(fits["I2"]), 0.0, 1.0 - 1e-12)
    qp = pool_chi2(fits["Q"], fits["df"])
    return {"g": g, "var": var, "z": z, "tau2": pool_sqrt_mean(fits["tau2"]), "i2": i2,
            "h2": 1.0 / (1.0 - i2), "q": qp["Q"], "q_p": qp["p"], "df": fits["df"]}
