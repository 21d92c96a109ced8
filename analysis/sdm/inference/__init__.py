"""Inference: permutation of subject images, TFCE, clusters and the corrector.

Modules
-------
:mod:`~analysis.sdm.inference.permutation`
    The PSI permutation test (Albajes-Eizagirre et al. 2019): maxima of every permutation.
:mod:`~analysis.sdm.inference.tfce`
    Threshold-free cluster enhancement (Smith & Nichols 2009).
:mod:`~analysis.sdm.inference.clusters`
    Thresholded clusters, their peaks and tables.
:mod:`~analysis.sdm.inference.correct`
    :class:`~analysis.sdm.inference.correct.PSICorrector`, the transformer that adds the
    family-wise-error-corrected maps to a result.
"""
