"""Hedges' g from t statistics, its exact variance, and threshold effect sizes.

Formulas follow Hedges & Olkin (1985) with the exact gamma-function correction J, as used by
SDM-PSI (bound maps reproduce ``J * t / sqrt(n)`` exactly) and by the ``metansue`` R package
(Radua et al.). ``n2 = None`` (or 0 / NaN) denotes a one-sample study.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def _two_sample(n2) -> np.ndarray:
    n2 = np.asarray(n2, dtype=float) if n2 is not None else np.asarray(np.nan)
    return np.isfinite(n2) & (n2 > 0)


def degrees_of_freedom(n1, n2=None) -> np.ndarray:
    """df = n1 - 1 (one-sample) or n1 + n2 - 2 (two-sample)."""
    n1 = np.asarray(n1, dtype=float)
    two = _two_sample(n2)
    n2v = np.where(two, np.asarray(n2 if n2 is not None else np.nan, dtype=float), 0.0)
    return np.where(two, n1 + n2v - 2.0, n1 - 1.0)


def hedges_j(df) -> np.ndarray:
    """Exact small-sample correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)).

    Falls back to the approximation 1 - 3 / (4 df - 1) where the exact form is not finite.
    """
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.exp(gammaln(df / 2) - 0.5 * np.log(df / 2) - gammaln((df - 1) / 2))
    return np.where(np.isfinite(j), j, 1 - 3 / (4 * df - 1))


def _scale(n1, n2=None) -> np.ndarray:
    """sqrt(1/n1) (one-sample) or sqrt(1/n1 + 1/n2) (two-sample)."""
    n1 = np.asarray(n1, dtype=float)
    two = _two_sample(n2)
    inv2 = np.where(two, 1.0 / np.where(two, np.asarray(n2 if n2 is not None else 1.0, float), 1.0), 0.0)
    return np.sqrt(1.0 / n1 + inv2)


def g_from_t(t, n1, n2=None) -> np.ndarray:
    """Hedges' g from a t statistic: ``J * t * sqrt(1/n1 [+ 1/n2])``."""
    return hedges_j(degrees_of_freedom(n1, n2)) * np.asarray(t, dtype=float) * _scale(n1, n2)


def t_from_g(g, n1, n2=None) -> np.ndarray:
    """Inverse of :func:`g_from_t`."""
    return np.asarray(g, dtype=float) / (hedges_j(degrees_of_freedom(n1, n2)) * _scale(n1, n2))


def g_variance(g, n1, n2=None) -> np.ndarray:
    """Exact variance of Hedges' g: ``1/n1 [+ 1/n2] + (1 - (df-2)/(df J^2)) g^2``."""
    df = degrees_of_freedom(n1, n2)
    j = hedges_j(df)
    g = np.asarray(g, dtype=float)
    return _scale(n1, n2) ** 2 + (1.0 - (df - 2.0) / (df * j * j)) * g * g
