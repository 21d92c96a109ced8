"""Diagnostics of a fitted meta-analysis: jackknife, meta-regression, Egger's test, extract.

Modules
-------
:mod:`~analysis.sdm.diagnostics.jackknife`
    :class:`~analysis.sdm.diagnostics.jackknife.Jackknife` (leave one study, or one group, out)
    and the cluster survival it reports (Radua & Mataix-Cols 2009).
:mod:`~analysis.sdm.diagnostics.metaregression`
    Meta-regressions on study covariates.
:mod:`~analysis.sdm.diagnostics.egger`
    Egger's test of funnel-plot asymmetry on the imputed data (Egger et al. 1997).
:mod:`~analysis.sdm.diagnostics.voxel`
    SDM-PSI's extract: every study's imputed effect, variance, weight and status and the pooled
    model at one voxel, and the reader of SDM-PSI's extract file.
"""
