"""Rubin's rules: combining the fits of ``m`` imputed data sets (imputations on axis 0).

- a scalar estimate: mean over imputations; total variance = within + (1 + 1/m) between, the
  between-imputation variance being the sample variance (ddof 1) of the estimates (Rubin 1987,
  ch. 3); SDM-Z = estimate / sqrt(total variance), normal reference, as SDM-PSI (its maps of
  Enge et al. 2021 satisfy ``z = g / sqrt(var)``);
- a coefficient vector: the same with the sample covariance of the vectors;
- tau2 and I2: ``(mean_j sqrt(x_j))^2`` (pooled on the scale of tau and I, as SDM-PSI: "SDM-PSI
  uses Rubin's rules to combine the coefficients of the model, their covariance and the
  heterogeneity statistics I and Q", Albajes-Eizagirre et al. 2019);
- Q: D2 pooling of chi-square statistics (Li, Meng, Raghunathan & Rubin 1991), converted back to
  a chi-square with the same p value ("For convenience, SDM-PSI converts FQ back into a Q").

After the ``metansue`` R package (``.pool.var``, ``.pool.cov``, ``.pool.chi2``). The compiled
kernels (:mod:`analysis.sdm.statistics.re_kernels`) pool from running sums with the same formulas.

References
----------
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
Li KH, Meng XL, Raghunathan TE, Rubin DB (1991). Significance levels from repeated p-values
with multiply-imputed data. Statistica Sinica 1:65-92.
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). NeuroImage 186:174-184.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def rubin_pool(est, var, xp=np) -> tuple:
    """Rubin pooling of a scalar estimate over axis 0.

    Parameters
    ----------
    est, var : array, shape (m, ...)
        Per-imputation estimates and their (within) variances.
    xp : module
        Array module (``numpy`` or ``cupy``).

    Returns
    -------
    mean, total_var : array, shape (...)
        ``mean_j est_j`` and ``mean_j var_j + (1 + 1/m) var_j(est_j)`` (ddof 1; the between
        term is 0 when ``m = 1``).

    References
    ----------
    Rubin (1987), eqs. 3.1.2-3.1.5.
    """
    m = est.shape[0]
    mean = est.mean(axis=0)
    between = est.var(axis=0, ddof=1) if m > 1 else xp.zeros_like(mean)
    return mean, var.mean(axis=0) + (1.0 + 1.0 / m) * between


def rubin_z(est, var, xp=np) -> tuple:
    """Pooled estimate, total variance and ``z = estimate / sqrt(total)`` (:func:`rubin_pool`).

    Parameters
    ----------
    est, var : array, shape (m, ...)
    xp : module

    Returns
    -------
    mean, total_var, z : array, shape (...)
    """
    mean, total = rubin_pool(est, var, xp)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean, total, mean / xp.sqrt(total)


def rubin_pool_cov(beta, cov) -> tuple:
    """Rubin pooling of coefficient vectors and their covariance matrices.

    Parameters
    ----------
    beta : ndarray, shape (m, ..., p)
    cov : ndarray, shape (m, ..., p, p)

    Returns
    -------
    beta_bar : ndarray, shape (..., p)
    total_cov : ndarray, shape (..., p, p)
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
    """D2 pooling from ``mean_j Q_j`` and ``var_j sqrt(Q_j)`` (ddof 1); see :func:`pool_chi2`.

    Parameters
    ----------
    q_mean, sqrt_q_var : array-like, shape (...)
    m : int
        Number of imputations.
    df : int
        Degrees of freedom of each Q.

    Returns
    -------
    dict
        As :func:`pool_chi2`.
    """
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

    Parameters
    ----------
    q : array-like, shape (m, ...)
    df : int

    Returns
    -------
    dict
        ``F`` (D2), ``df2``, ``p`` (P(F_{df, df2} > D2)) and ``Q``: the chi-square(df) quantile
        with the same upper-tail probability.

    References
    ----------
    Li, Meng, Raghunathan & Rubin (1991).
    """
    q = np.maximum(np.asarray(q, dtype=float), 0.0)
    return pool_chi2_moments(q.mean(axis=0), np.sqrt(q).var(axis=0, ddof=1), q.shape[0], df)
