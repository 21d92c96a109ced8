"""Hedges' g from t statistics and back, and its exact variance.

``g = J t sqrt(1/n1 [+ 1/n2])`` with the exact gamma-function correction ``J`` (Hedges &
Olkin 1985), as used by SDM-PSI (its bound maps reproduce ``J * t / sqrt(n)`` exactly) and by
the ``metansue`` R package (Radua et al.). ``n2 = None`` (or 0 / NaN) denotes a one-sample
study. ``J``, the degrees of freedom and the variance ``v(g) = k1 + k2 g^2`` are those of the
statistics core (:mod:`analysis.sdm.statistics.hedges`), re-exported here.

References
----------
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press.
"""

from __future__ import annotations

import numpy as np

from analysis.sdm.statistics.hedges import (
    degrees_of_freedom,
    g_variance,
    hedges_j,
    sampling_scale,
    variance_coefficients,
)

__all__ = ["degrees_of_freedom", "g_from_t", "g_variance", "hedges_j", "t_from_g",
           "variance_coefficients"]


def g_from_t(t, n1, n2=None) -> np.ndarray:
    """Hedges' g from a t statistic: ``J * t * sqrt(1/n1 [+ 1/n2])``."""
    return (hedges_j(degrees_of_freedom(n1, n2)) * np.asarray(t, dtype=float)
            * sampling_scale(n1, n2))


def t_from_g(g, n1, n2=None) -> np.ndarray:
    """Inverse of :func:`g_from_t`."""
    return np.asarray(g, dtype=float) / (hedges_j(degrees_of_freedom(n1, n2))
                                         * sampling_scale(n1, n2))
