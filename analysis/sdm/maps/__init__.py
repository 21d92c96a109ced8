"""From peaks to study maps: the voxel space, the kernels and SDM-PSI's pre-processing.

Modules
-------
:mod:`~analysis.sdm.maps.space`
    The masked voxel space (MNI152 2 mm grid, SDM-PSI's grey-matter mask).
:mod:`~analysis.sdm.maps.kernel`
    Isotropic and anisotropic (tissue-stretched) Gaussian kernels around peaks.
:mod:`~analysis.sdm.maps.templates`
    The stretch templates of the anisotropic kernel, the shipped fitted one included.
:mod:`~analysis.sdm.maps.preprocess`
    The lower and upper bound maps of every study's effect (Hedges g).
"""
