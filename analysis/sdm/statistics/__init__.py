"""The engine's statistics: the core (one implementation of each piece of the model's algebra),
the model built on it, and the compiled kernels.

The core
--------
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

Built on it
-----------
:mod:`~analysis.sdm.statistics.effect_sizes`
    Hedges' g from t statistics and back.
:mod:`~analysis.sdm.statistics.metansue`
    MetaNSUE: censored maximum likelihood (NumPy path and compiled kernels) and the imputation
    of study images.
:mod:`~analysis.sdm.statistics.random_effects`
    Random-effects meta-analysis and meta-regression of every voxel.
:mod:`~analysis.sdm.statistics.rubin`
    Rubin's rules applied to the fits of the imputations.
:mod:`~analysis.sdm.statistics.re_kernels`
    Compiled (numba) random-effects fits of every imputation, pooled.

The array functions take an array module ``xp`` (``numpy`` or ``cupy``,
:func:`analysis.sdm.backend.array_module`): the permutation test runs them on a GPU through
CuPy. The compiled kernels of :mod:`analysis.sdm.statistics.re_kernels` (numba; fused loops
over voxels) are the one other implementation of the same formulas, tested against this core.

References
----------
DerSimonian R, Laird N (1986). Meta-analysis in clinical trials. Control Clin Trials 7:177-188.
Hedges LV (1981). J Educ Stat 6:107-128.
Hedges LV, Olkin I (1985). Statistical Methods for Meta-Analysis. Academic Press.
Li KH, Meng XL, Raghunathan TE, Rubin DB (1991). Statistica Sinica 1:65-92.
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
Viechtbauer W (2005). J Educ Behav Stat 30:261-293.
"""
