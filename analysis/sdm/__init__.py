"""Open implementation of Seed-based d Mapping with Permutation of Subject Images (SDM-PSI).

A library with NiMARE's shape, usable without the rest of this package:

>>> from analysis.sdm import SDMDataset, SDMPSI, PSICorrector, Jackknife  # doctest: +SKIP
>>> dset = SDMDataset.from_sdm_project("my_sdm_project")     # doctest: +SKIP
>>> result = SDMPSI(imputations=50, seed=0).fit(dset)       # doctest: +SKIP
>>> result = PSICorrector(n_iters=1000).transform(result)    # doctest: +SKIP
>>> result.save_maps("out")                                  # doctest: +SKIP

Modules: inputs (:mod:`~analysis.sdm.dataset`, :mod:`~analysis.sdm.project` for SDM project
folders, :mod:`~analysis.sdm.studies`, :mod:`~analysis.sdm.peaks`, :mod:`~analysis.sdm.coords`,
:mod:`~analysis.sdm.io`), space (:mod:`~analysis.sdm.space`), pre-processing
(:mod:`~analysis.sdm.kernel`, :mod:`~analysis.sdm.templates`, :mod:`~analysis.sdm.kernel_fit`,
:mod:`~analysis.sdm.preprocess`), statistics (:mod:`~analysis.sdm.effect_sizes`,
:mod:`~analysis.sdm.metansue`, :mod:`~analysis.sdm.random_effects`,
:mod:`~analysis.sdm.re_kernels`, :mod:`~analysis.sdm.rubin`, :mod:`~analysis.sdm.egger`,
:mod:`~analysis.sdm.reference`), the estimator (:mod:`~analysis.sdm.estimator`), inference
(:mod:`~analysis.sdm.permutation`, :mod:`~analysis.sdm.tfce`, :mod:`~analysis.sdm.clusters`,
:mod:`~analysis.sdm.correct`), diagnostics (:mod:`~analysis.sdm.jackknife`,
:mod:`~analysis.sdm.metaregression`). Errors: :mod:`~analysis.sdm.errors`.

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186:174-184.
"""

from __future__ import annotations

import importlib

#: public names -> defining module (imported on first use: numba kernels compile lazily)
_EXPORTS = {
    "SDMDataset": "analysis.sdm.dataset",
    "SDMPSI": "analysis.sdm.estimator",
    "MetaResult": "analysis.sdm.estimator",
    "PSICorrector": "analysis.sdm.correct",
    "Jackknife": "analysis.sdm.correct",
    "threshold_clusters": "analysis.sdm.clusters",
    "direction_labels": "analysis.sdm.clusters",
    "psi_permutation_test": "analysis.sdm.permutation",
    "read_sdm_project": "analysis.sdm.project",
    "write_sdm_project": "analysis.sdm.project",
    "DataError": "analysis.sdm.errors",
    "DataErrors": "analysis.sdm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'analysis.sdm' has no attribute {name!r}")
