"""The statistics core of the engine: one implementation of each piece of the model's algebra.

Modules
-------
:mod:`~analysis.sdm.statistics.hedges`
    Hedges' correction ``J``, degrees of freedom and the exact variance of Hedges' g,
    ``v(g) = k1 + k2 g^2`` (Hedges 1981; Hedges & Olkin 1985).
:mod:`~analysis.sdm.statistics.wls`
    Weighted least squares of every column (voxel), with one design for all columns or one per
    column, and the leverages.
:mod:`~analysis.sdm.statistics.tau2`
    Fixed-effect Q, DerSimonian-Laird (DerSimonian & Laird 1986) and REML (Viechtbauer 2005;
    Newton steps with a Fisher-scoring fallback) between-study variance.
:mod:`~analysis.sdm.statistics.model`
    The random-effects fit of every column (``fit_columns``).
:mod:`~analysis.sdm.statistics.hypothesis`
    The hypothesis (contrast) row and ``C' beta``, ``C' Cov C``.
:mod:`~analysis.sdm.statistics.pooling`
    Rubin's rules (Rubin 1987) and D2 pooling of Q (Li et al. 1991).

The array functions take an array module ``xp`` (``numpy`` or ``cupy``,
:func:`analysis.sdm.backend.array_module`): the permutation test runs them on a GPU through
CuPy. The compiled kernels of :mod:`analysis.sdm.re_kernels` (numba; fused loops over voxels)
are the one other implementation of the same formulas, tested against this core.

References
----------
DerSimonian R, Laird N (1986). Meta-analysis in clinical trials. Control Clin Trials 7:177-188.
Hedges LV (1981). J Educ Stat 6:107-128.
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press.
Li KH, Meng XL, Raghunathan TE, Rubin DB (1991). Statistica Sinica 1:65-92.
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
Viechtbauer W (2005). J Educ Behav Stat 30:261-293.
"""

from __future__ import annotations

from analysis.sdm.statistics.hedges import (
    degrees_of_freedom,
    g_variance,
    hedges_j,
    sampling_scale,
    variance_coefficients,
)
from analysis.sdm.statistics.hypothesis import contrast, hypothesis_row
from analysis.sdm.statistics.model import HETEROGENEITY, check_heterogeneity, fit_columns
from analysis.sdm.statistics.pooling import (
    pool_chi2,
    pool_chi2_moments,
    pool_sqrt_mean,
    rubin_pool,
    rubin_pool_cov,
    rubin_z,
)
from analysis.sdm.statistics.tau2 import (
    REML_MAX_ITER,
    REML_TOL,
    dersimonian_laird,
    dl_tau2,
    fixed_effect_heterogeneity,
    reml,
)
from analysis.sdm.statistics.wls import (
    from_columns,
    leverage,
    to_columns,
    weighted_least_squares,
)

__all__ = [
    "HETEROGENEITY", "REML_MAX_ITER", "REML_TOL", "check_heterogeneity", "contrast",
    "degrees_of_freedom", "dersimonian_laird", "dl_tau2", "fit_columns",
    "fixed_effect_heterogeneity", "from_columns", "g_variance", "hedges_j", "hypothesis_row",
    "leverage", "pool_chi2", "pool_chi2_moments", "pool_sqrt_mean", "reml", "rubin_pool",
    "rubin_pool_cov", "rubin_z", "sampling_scale", "to_columns", "variance_coefficients",
    "weighted_least_squares",
]
