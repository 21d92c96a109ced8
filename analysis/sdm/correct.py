"""NiMARE-shaped transformers of a fitted :class:`~analysis.sdm.estimator.MetaResult`.

``PSICorrector(...).transform(result)`` adds family-wise-error-corrected maps by permutation of
subject images (SDM-PSI; :func:`analysis.sdm.permutation.psi_permutation_test`), as NiMARE's
``Corrector.transform`` adds corrected maps to its ``MetaResult``; ``Jackknife(...)
.transform(result)`` adds a leave-one-study-out table of cluster survival (the SDM manual's
jackknife sensitivity analysis), as NiMARE's ``diagnostics.Jackknife``. Both return a new
result; the input is not modified.

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage
186:174-184.
Radua J, Mataix-Cols D (2009). Voxel-wise meta-analysis of grey matter changes in
obsessive-compulsive disorder. Br J Psychiatry 195:393-402.
Salo T et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture Neuro 3.
"""

from __future__ import annotations

import copy

import numpy as np

from analysis.sdm.base import ParamsMixin
from analysis.sdm.clusters import THRESHOLDS, direction_labels, threshold_clusters
from analysis.sdm.permutation import (
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


def _copy(result):
    out = copy.copy(result)
    out.maps = dict(result.maps)
    out.tables = dict(result.tables)
    return out


class PSICorrector(ParamsMixin):
    """Family-wise error correction by permutation of subject images (SDM-PSI).

    Parameters
    ----------
    n_iters : int
        Permutations including the identity (SDM-PSI's 1000).
    seed : int
        Seed of the subject images and the permutations.
    n_jobs : int
        Parallel workers over permutation chunks.
    backend : {"numpy", "numba", "cupy"}
        Array back-end of the permutation kernel.
    subject_fwhm_mm, chunk_size, reml_iterations, reml_tol, voxel_block, tfce_params
        See :func:`analysis.sdm.permutation.psi_permutation_test`.
    tfce_subject_fwhm_mm : float, optional
        Smoothness of a separate set of subject images for the TFCE null (``None``, the
        default: SDM-PSI's shared null; see
        :func:`analysis.sdm.permutation.psi_permutation_test`).
    precision : {"single", "double"}
        Arithmetic of the per-study terms of the permuted fits (numba back-end, mean models;
        see :func:`analysis.sdm.permutation.psi_permutation_test`).
    progress : bool
        Show a progress bar.
    """

    def __init__(self, n_iters: int = N_PERMUTATIONS, seed: int = 0, n_jobs: int = 1,
                 backend: str = "numpy", subject_fwhm_mm: float = SUBJECT_FWHM_MM,
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

    def transform(self, result):
        """A copy of ``result`` with the corrected maps (:data:`CORRECTED_MAPS`), the table
        ``permutation_maxima`` and ``permutation_`` (the :class:`PermutationResult`).

        Parameters
        ----------
        result : MetaResult
            A fit that kept its imputations (``SDMPSI(keep_imputations=True)``).
        """
        n_iters = int(self.n_iters)
        if n_iters < 2:
            raise ValueError(f"n_iters must be at least 2 (the identity and one permutation), "
                             f"got {n_iters}")
        if getattr(result, "imputations", None) is None:
            raise ValueError("the result has no imputations; fit with keep_imputations=True")
        p = self.get_params()
        perm = psi_permutation_test(result, n_iters, seed=int(p["seed"]),
                                    n_jobs=int(p["n_jobs"]), backend=p["backend"],
                                    chunk_size=p["chunk_size"],
                                    reml_iterations=p["reml_iterations"],
                                    reml_tol=p["reml_tol"], voxel_block=p["voxel_block"],
                                    subject_fwhm_mm=p["subject_fwhm_mm"],
                                    tfce_subject_fwhm_mm=p["tfce_subject_fwhm_mm"],
                                    tfce_params=p["tfce_params"], precision=p["precision"],
                                    progress=p["progress"])
        out = _copy(result)
        for name in CORRECTED_MAPS:
            out.maps[name] = np.asarray(perm.maps[name], dtype=np.float32)
        out.tables["permutation_maxima"] = perm.maxima
        out.permutation_ = perm
        return out


class Jackknife(ParamsMixin):
    """Leave-one-study-out sensitivity of the clusters of a fit.

    Every study is left out in turn and the model re-fitted from the result's bound maps with
    the estimator that produced it; each cluster of the full analysis "survives" a re-fit when
    a same-direction cluster overlaps it.

    Parameters
    ----------
    p_threshold, peak_z, min_voxels, local_peak_distance_mm, connectivity : optional
        Thresholds of :func:`analysis.sdm.clusters.threshold_clusters` (default
        :data:`analysis.sdm.clusters.THRESHOLDS`).
    progress : bool
        Show a progress bar over the re-fits.
    """

    def __init__(self, p_threshold: float = THRESHOLDS["p_threshold"],
                 peak_z: float = THRESHOLDS["peak_z"],
                 min_voxels: int = THRESHOLDS["min_voxels"],
                 local_peak_distance_mm: float = THRESHOLDS["local_peak_distance_mm"],
                 connectivity: int = THRESHOLDS["connectivity"], progress: bool = False):
        self.p_threshold = p_threshold
        self.peak_z = peak_z
        self.min_voxels = min_voxels
        self.local_peak_distance_mm = local_peak_distance_mm
        self.connectivity = connectivity
        self.progress = progress

    def _thresholds(self) -> dict:
        return {"p_threshold": float(self.p_threshold), "peak_z": float(self.peak_z),
                "min_voxels": int(self.min_voxels),
                "local_peak_distance_mm": float(self.local_peak_distance_mm),
                "connectivity": int(self.connectivity)}

    def transform(self, result):
        """A copy of ``result`` with tables ``jackknife`` (one row per re-fit and cluster:
        :data:`analysis.sdm.jackknife.JACKKNIFE_COLUMNS`) and ``jackknife_summary``.

        Parameters
        ----------
        result : MetaResult
            A fit of :meth:`SDMPSI.fit` (it keeps its bound maps and its estimator).
        """
        from analysis.sdm import jackknife as jk

        est, bounds = getattr(result, "estimator", None), getattr(result, "bounds", None)
        if est is None or bounds is None:
            raise ValueError("the result has no estimator or bound maps (use SDMPSI.fit)")
        if result.X.shape[1] > 1:
            raise ValueError("the jackknife re-fits the mean model only (no covariates)")
        thr = self._thresholds()
        base = threshold_clusters(result.maps["z"], result.space, local_peaks=False,
                                  directions=direction_labels(bounds.n2), **thr)
        studies = list(bounds.studies)
        refit = copy.copy(est).set_params(keep_imputations=False, progress=False)

        def fit(idx):
            return refit.fit_bounds(bounds.lower[idx], bounds.upper[idx], bounds.n1[idx],
                                    bounds.n2[idx], result.space,
                                    studies=[studies[i] for i in idx])

        fits = jk.refit_subsets(fit, studies, jk.leave_one_out_sets(studies),
                                progress=self.progress)
        table = jk.cluster_survival(base.labels, base.peaks(),
                                    {k: r.maps["z"] for k, r in fits.items()}, result.space,
                                    "leave-one-out", {k: len(r.n1) for k, r in fits.items()},
                                    **thr)
        out = _copy(result)
        out.tables["jackknife"] = table
        out.tables["jackknife_summary"] = jk.survival_summary(table)
        return out
