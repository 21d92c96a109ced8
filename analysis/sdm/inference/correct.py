"""NiMARE-shaped transformers of a fitted :class:`~analysis.sdm.estimator.MetaResult`.

``PSICorrector(...).transform(result)`` adds family-wise-error-corrected maps by permutation of
subject images (SDM-PSI; :func:`analysis.sdm.inference.permutation.psi_permutation_test`), as NiMARE's
``Corrector.transform`` adds corrected maps to its ``MetaResult``; ``Jackknife(...)
.transform(result)`` adds a leave-one-study-out (or leave-one-group-out) table of cluster
survival (the SDM manual's jackknife sensitivity analysis), as NiMARE's
``diagnostics.Jackknife``. Both return a new result; the input is not modified. Both keep no
state and follow scikit-learn's parameter conventions (:mod:`analysis.sdm.base`), so
``sklearn.base.clone`` copies them. A whole analysis through the public API::

    result = SDMPSI(seed=0).fit(dataset)
    result = PSICorrector(n_iters=1000, seed=1).transform(result)
    result = Jackknife().transform(result)                    # leave one study out
    result = Jackknife(groups="disorder").transform(result)   # then one disorder

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage
186:174-184.
Radua J, Mataix-Cols D (2009). Voxel-wise meta-analysis of grey matter changes in
obsessive-compulsive disorder. Br J Psychiatry 195:393-402.
Salo T et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture Neuro 3.
doi:10.52294/001c.87681.
Buitinck L et al. (2013). API design for machine learning software: experiences from the
scikit-learn project. arXiv:1309.0238.
"""

from __future__ import annotations

import warnings

import numpy as np

from analysis.sdm.backend import available_backends
from analysis.sdm.base import ParamsMixin
from analysis.sdm.estimator import copy_result
from analysis.sdm.inference.permutation import (
    CHUNK_SIZE,
    N_PERMUTATIONS,
    PSI_REML_ITERATIONS,
    PSI_REML_TOL,
    SUBJECT_FWHM_MM,
    TFCE_SUBJECT_FWHM_MM,
    VOXEL_BLOCK,
    psi_permutation_test,
)

#: maps :class:`PSICorrector` adds (``1 - p_FWE`` and p_FWE per direction, TFCE maps)
CORRECTED_MAPS = ("corrp_voxel", "corrp_voxel_neg", "corrp_tfce", "corrp_tfce_neg", "p_voxel",
                  "p_voxel_neg", "p_tfce", "p_tfce_neg", "tfce", "tfce_neg")




class PSICorrector(ParamsMixin):
    """Family-wise error correction by permutation of subject images (SDM-PSI).

    A transformer of a fitted :class:`~analysis.sdm.estimator.MetaResult`, as NiMARE's
    ``FWECorrector`` (Salo et al. 2023): :meth:`transform` returns a new result with the
    corrected maps; the corrector itself learns nothing and keeps no state, so one corrector
    can serve many results (``get_params``, ``set_params`` and ``sklearn.base.clone`` work as
    for a scikit-learn estimator, Buitinck et al. 2013). A mean model is permuted by subject
    images (Albajes-Eizagirre et al. 2019), a meta-regression slope by Freedman-Lane
    permutation of studies (:func:`analysis.sdm.inference.permutation.psi_permutation_test`).

    Parameters
    ----------
    n_iters : int
        Permutations including the identity (SDM-PSI's 1000; 1 runs the identity alone and
        every p_FWE is 1).
    seed : int
        Seed of the subject images and the permutations.
    n_jobs : int
        Parallel workers over permutation chunks.
    backend : {"numba", "numpy", "cupy"}
        Array back-end of the permutation kernel (:mod:`analysis.sdm.backend`). The default,
        ``"numba"``, is about 25 times faster than ``"numpy"``; where numba is not installed
        :meth:`transform` warns and runs ``"numpy"`` (the back-end used is in
        ``result.permutation_.info["backend"]``).
    subject_fwhm_mm, chunk_size, reml_iterations, reml_tol, voxel_block, tfce_params
        See :func:`analysis.sdm.inference.permutation.psi_permutation_test`.
    tfce_subject_fwhm_mm : float, optional
        Smoothness of a separate set of subject images for the TFCE null (``None``, the
        default: SDM-PSI's shared null; see
        :func:`analysis.sdm.inference.permutation.psi_permutation_test`).
    precision : {"single", "double"}
        Arithmetic of the per-study terms of the permuted fits (numba back-end, mean models;
        see :func:`analysis.sdm.inference.permutation.psi_permutation_test`).
    progress : bool
        Show a progress bar.

    Notes
    -----
    What :meth:`transform` sets on the result it returns (declared attributes of
    :class:`~analysis.sdm.estimator.MetaResult`): the maps :data:`CORRECTED_MAPS`, the table
    ``permutation_maxima``, ``permutation_`` (the
    :class:`~analysis.sdm.inference.permutation.PermutationResult`: null maxima, the identity
    permutation's maps, settings and timings) and ``corrector`` (an unfitted copy of this
    corrector). A second correction of the same result replaces all of them.

    References
    ----------
    Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). NeuroImage 186:174-184.
    Winkler AM, Ridgway GR, Webster MA, Smith SM, Nichols TE (2014). Permutation inference for
    the general linear model. NeuroImage 92:381-397 (Freedman-Lane).
    """

    def __init__(self, n_iters: int = N_PERMUTATIONS, seed: int = 0, n_jobs: int = 1,
                 backend: str = "numba", subject_fwhm_mm: float = SUBJECT_FWHM_MM,
                 tfce_subject_fwhm_mm: float | None = TFCE_SUBJECT_FWHM_MM,
                 chunk_size: int = CHUNK_SIZE, reml_iterations: int = PSI_REML_ITERATIONS,
                 reml_tol: float = PSI_REML_TOL, voxel_block: int = VOXEL_BLOCK,
                 tfce_params: dict | None = None, precision: str = "single",
                 progress: bool = False):
        self.n_iters = n_iters
        self.seed = seed
        self.n_jobs = n_jobs
        self.backend = backend
        self.subject_fwhm_mm = subject_fwhm_mm
        self.tfce_subject_fwhm_mm = tfce_subject_fwhm_mm
        self.chunk_size = chunk_size
        self.reml_iterations = reml_iterations
        self.reml_tol = reml_tol
        self.voxel_block = voxel_block
        self.tfce_params = tfce_params
        self.precision = precision
        self.progress = progress

    def _backend(self) -> str:
        """The back-end to run: ``backend``, or ``"numpy"`` (with a warning) without numba."""
        if self.backend == "numba" and "numba" not in available_backends():
            warnings.warn("numba is not installed: PSICorrector runs the NumPy back-end "
                          "(about 25 times slower); install numba for the default",
                          RuntimeWarning, stacklevel=3)
            return "numpy"
        return self.backend

    def transform(self, result):
        """A copy of ``result`` with the corrected maps (see Notes).

        Parameters
        ----------
        result : MetaResult
            A fit that kept its imputations (``SDMPSI(keep_imputations=True)``).

        Returns
        -------
        MetaResult
            A new result; ``result`` is not modified.
        """
        n_iters = int(self.n_iters)
        if n_iters < 1:
            raise ValueError(f"n_iters must be at least 1 (the identity), got {n_iters}")
        if getattr(result, "imputations", None) is None:
            raise ValueError("the result has no imputations; fit with keep_imputations=True")
        p = self.get_params(deep=False)
        perm = psi_permutation_test(result, n_iters, seed=int(p["seed"]),
                                    n_jobs=int(p["n_jobs"]), backend=self._backend(),
                                    chunk_size=p["chunk_size"],
                                    reml_iterations=p["reml_iterations"],
                                    reml_tol=p["reml_tol"], voxel_block=p["voxel_block"],
                                    subject_fwhm_mm=p["subject_fwhm_mm"],
                                    tfce_subject_fwhm_mm=p["tfce_subject_fwhm_mm"],
                                    tfce_params=p["tfce_params"], precision=p["precision"],
                                    progress=p["progress"])
        out = copy_result(result)
        for name in CORRECTED_MAPS:
            out.maps[name] = np.asarray(perm.maps[name], dtype=np.float32)
        out.tables["permutation_maxima"] = perm.maxima
        out.permutation_ = perm
        out.corrector = self._parameter_copy()
        return out
