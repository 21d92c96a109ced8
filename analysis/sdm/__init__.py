"""Open implementation of Seed-based d Mapping with Permutation of Subject Images (SDM-PSI).

A library with NiMARE's shape, usable without the rest of this package:

>>> from analysis.sdm import SDMDataset, SDMPSI, PSICorrector, Jackknife  # doctest: +SKIP
>>> dset = SDMDataset.from_sdm_project("my_sdm_project")     # doctest: +SKIP
>>> result = SDMPSI(imputations=50, seed=0).fit(dset)       # doctest: +SKIP
>>> result = PSICorrector(n_iters=1000).transform(result)    # doctest: +SKIP
>>> result.save_maps("out")                                  # doctest: +SKIP

Sub-packages: :mod:`~analysis.sdm.inputs` (:mod:`~analysis.sdm.inputs.dataset`,
:mod:`~analysis.sdm.inputs.project` for SDM project folders, the rule set of the study and peak
tables :mod:`~analysis.sdm.inputs.studies` and :mod:`~analysis.sdm.inputs.peaks`,
:mod:`~analysis.sdm.inputs.coords`, :mod:`~analysis.sdm.inputs.io`), :mod:`~analysis.sdm.maps`
(space, kernels, templates, pre-processing: :mod:`~analysis.sdm.maps.space`,
:mod:`~analysis.sdm.maps.kernel`, :mod:`~analysis.sdm.maps.templates`,
:mod:`~analysis.sdm.maps.preprocess`), :mod:`~analysis.sdm.statistics` (the core: weighted least
squares, DerSimonian-Laird and REML tau2, Rubin's rules, the hypothesis row, the Hedges-g
variance; and :mod:`~analysis.sdm.statistics.effect_sizes`,
:mod:`~analysis.sdm.statistics.metansue`, :mod:`~analysis.sdm.statistics.random_effects`,
:mod:`~analysis.sdm.statistics.re_kernels`, :mod:`~analysis.sdm.statistics.rubin`),
:mod:`~analysis.sdm.inference` (:mod:`~analysis.sdm.inference.permutation`,
:mod:`~analysis.sdm.inference.tfce`, :mod:`~analysis.sdm.inference.clusters`,
:mod:`~analysis.sdm.inference.correct`), :mod:`~analysis.sdm.diagnostics`
(:mod:`~analysis.sdm.diagnostics.jackknife`, :mod:`~analysis.sdm.diagnostics.metaregression`,
:mod:`~analysis.sdm.diagnostics.egger`). At the top: the estimator
(:mod:`~analysis.sdm.estimator`), parameters (:mod:`~analysis.sdm.base`), random streams
(:mod:`~analysis.sdm.rng`), progress (:mod:`~analysis.sdm.progress`), array back-ends
(:mod:`~analysis.sdm.backend`), cheap forced garbage collections around nilearn
(:mod:`~analysis.sdm.heap`). Errors: :mod:`~analysis.sdm.errors`. The defaults of
:class:`SDMPSI`: SDM-PSI's ``gray_matter_2mm`` mask, a public file fetched on first use from its
canonical URL into the user cache and checked by SHA-256 (:mod:`~analysis.sdm.datasets`), and
the kernel template fitted on SDM-PSI's maps, which the engine ships in ``analysis/sdm/data/``
(its ``README.md`` gives the source).
Estimators and transformers follow scikit-learn's parameter conventions (Buitinck et al. 2013),
so ``sklearn.base.clone`` copies them (:mod:`~analysis.sdm.base`).

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186:174-184.
Buitinck L et al. (2013). API design for machine learning software: experiences from the
scikit-learn project. arXiv:1309.0238.
"""

from __future__ import annotations

import importlib

#: public names -> defining module (imported on first use: numba kernels compile lazily)
_EXPORTS = {
    "SDMDataset": "analysis.sdm.inputs.dataset",
    "SDMPSI": "analysis.sdm.estimator",
    "MetaResult": "analysis.sdm.estimator",
    "PSICorrector": "analysis.sdm.inference.correct",
    "Jackknife": "analysis.sdm.diagnostics.jackknife",
    "threshold_clusters": "analysis.sdm.inference.clusters",
    "direction_labels": "analysis.sdm.inference.clusters",
    "psi_permutation_test": "analysis.sdm.inference.permutation",
    "read_sdm_project": "analysis.sdm.inputs.project",
    "write_sdm_project": "analysis.sdm.inputs.project",
    "DataError": "analysis.sdm.errors",
    "DataErrors": "analysis.sdm.errors",
    "MissingCovariateWarning": "analysis.sdm.estimator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'analysis.sdm' has no attribute {name!r}")
