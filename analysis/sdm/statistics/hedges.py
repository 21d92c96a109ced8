"""Hedges' small-sample correction and the exact sampling variance of Hedges' g.

For a study with ``df`` degrees of freedom (``n1 - 1`` for one sample, ``n1 + n2 - 2`` for two)
and ``s2 = 1/n1 [+ 1/n2]``, the exact variance of Hedges' g (Hedges 1981; Hedges & Olkin 1985,
ch. 5) is quadratic in g::

    v(g) = k1 + k2 g^2,   k1 = s2,   k2 = 1 - (df - 2) / (df J(df)^2)

with the exact correction ``J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df - 1)/2))``. SDM-PSI's
bound maps reproduce ``g = J t sqrt(s2)`` exactly, and the ``metansue`` R package (Radua et al.)
uses this variance for every imputed value. ``n2 = None`` (or 0 / NaN) denotes a one-sample
study. The functions work on anything NumPy broadcasts.

References
----------
Hedges LV (1981). Distribution theory for Glass's estimator of effect size and related
estimators. J Educ Stat 6:107-128.
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def two_sample(n2) -> np.ndarray:
    """Whether each study has a second group (``n2`` finite and positive)."""
    n2 = np.asarray(n2, dtype=float) if n2 is not None else np.asarray(np.nan)
    return np.isfinite(n2) & (n2 > 0)


def degrees_of_freedom(n1, n2=None) -> np.ndarray:
    """Degrees of freedom of a study's t statistic.

    Parameters
    ----------
    n1, n2 : array-like
        Group sizes (``n2`` None, 0 or NaN for a one-sample study).

    Returns
    -------
    ndarray
        ``n1 - 1`` (one sample) or ``n1 + n2 - 2`` (two samples).
    """
    n1 = np.asarray(n1, dtype=float)
    two = two_sample(n2)
    n2v = np.where(two, np.asarray(n2 if n2 is not None else np.nan, dtype=float), 0.0)
    return np.where(two, n1 + n2v - 2.0, n1 - 1.0)


def hedges_j(df) -> np.ndarray:
    """Exact small-sample correction ``J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2))``.

    Parameters
    ----------
    df : array-like
        Degrees of freedom.

    Returns
    -------
    ndarray
        ``J``; the approximation ``1 - 3 / (4 df - 1)`` (Hedges 1981) where the exact form is
        not finite (very large ``df``).
    """
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.exp(gammaln(df / 2) - 0.5 * np.log(df / 2) - gammaln((df - 1) / 2))
    return np.where(np.isfinite(j), j, 1 - 3 / (4 * df - 1))


def sampling_scale(n1, n2=None) -> np.ndarray:
    """``sqrt(1/n1)`` (one sample) or ``sqrt(1/n1 + 1/n2)`` (two samples): ``g = J t`` times it."""
    n1 = np.asarray(n1, dtype=float)
    two = two_sample(n2)
    inv2 = np.where(two, 1.0 / np.where(two, np.asarray(n2 if n2 is not None else 1.0, float),
                                        1.0), 0.0)
    return np.sqrt(1.0 / n1 + inv2)


def variance_coefficients(n1, n2=None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``k1, k2`` of the exact Hedges-g variance ``v(g) = k1 + k2 g^2``.

    Parameters
    ----------
    n1, n2 : array-like, shape (k,)
        Group sizes (``n2`` None or NaN for one-sample studies).

    Returns
    -------
    k1, k2 : ndarray
        ``1/n1 [+ 1/n2]`` and ``1 - (df - 2) / (df J^2)``.

    References
    ----------
    Hedges & Olkin (1985), ch. 5.
    """
    n1 = np.asarray(n1, dtype=float)
    n2 = np.full_like(n1, np.nan) if n2 is None else np.asarray(n2, dtype=float)
    df = degrees_of_freedom(n1, n2)
    j = hedges_j(df)
    return sampling_scale(n1, n2) ** 2, 1.0 - (df - 2.0) / (df * j * j)


def g_variance(g, n1, n2=None) -> np.ndarray:
    """Exact variance of Hedges' g, ``k1 + k2 g^2`` (:func:`variance_coefficients`).

    Parameters
    ----------
    g : array-like
        Hedges' g (broadcast against ``n1``, ``n2``).
    n1, n2 : array-like
        Group sizes (``n2`` None or NaN for one-sample studies).

    Returns
    -------
    ndarray
        ``1/n1 [+ 1/n2] + (1 - (df - 2) / (df J^2)) g^2``.
    """
    k1, k2 = variance_coefficients(n1, n2)
    g = np.asarray(g, dtype=float)
    return k1 + k2 * g * g
