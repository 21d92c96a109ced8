"""NiMARE-shaped transformers of a fitted :class:`~analysis.sdm.estimator.MetaResult`.

``PSICorrector(...).transform(result)`` adds family-wise-error-corrected maps by permutation of
subject images (SDM-PSI; :func:`analysis.sdm.permutation.psi_permutation_test`), as NiMARE's
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

import copy
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from analysis.sdm.backend import available_backends
from analysis.sdm.base import ParamsMixin
from analysis.sdm.clusters import THRESHOLDS, threshold_clusters
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
    """A shallow copy of a result with its own ``maps``, ``tables`` and ``diagnostics``."""
    out = copy.copy(result)
    out.maps = dict(result.maps)
    out.tables = dict(result.tables)
    out.diagnostics = list(getattr(result, "diagnostics", []))
    return out


class PSICorrector(ParamsMixin):
    """Family-wise error correction by permutation of subject images (SDM-PSI).

    A transformer of a fitted :class:`~analysis.sdm.estimator.MetaResult`, as NiMARE's
    ``FWECorrector`` (Salo et al. 2023): :meth:`transform` returns a new result with the
    corrected maps; the corrector itself learns nothing and keeps no state, so one corrector
    can serve many results (``get_params``, ``set_params`` and ``sklearn.base.clone`` work as
    for a scikit-learn estimator, Buitinck et al. 2013). A mean model is permuted by subject
    images (Albajes-Eizagirre et al. 2019), a meta-regression slope by Freedman-Lane
    permutation of studies (:func:`analysis.sdm.permutation.psi_permutation_test`).

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

    Notes
    -----
    What :meth:`transform` sets on the result it returns (declared attributes of
    :class:`~analysis.sdm.estimator.MetaResult`): the maps :data:`CORRECTED_MAPS`, the table
    ``permutation_maxima``, ``permutation_`` (the
    :class:`~analysis.sdm.permutation.PermutationResult`: null maxima, the identity
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
        out = _copy(result)
        for name in CORRECTED_MAPS:
            out.maps[name] = np.asarray(perm.maps[name], dtype=np.float32)
        out.tables["permutation_maxima"] = perm.maxima
        out.permutation_ = perm
        out.corrector = self._parameter_copy()
        return out


def _group_labels(groups, result) -> tuple[list[str], str]:
    """One group label per study of ``result`` and the family's name, from ``groups``."""
    studies = list(result.bounds.studies)
    if isinstance(groups, str):
        table = getattr(result, "study_table", None)
        if table is None or groups not in table.columns:
            raise ValueError(f"groups={groups!r}: the result has no study table with that "
                             f"column (fit with SDMPSI.fit or fit_preprocessed(bounds, "
                             f"study_table)), or pass a mapping study -> group")
        labels = table.set_index("study").loc[studies, groups].astype(str)
        return list(labels), groups
    if isinstance(groups, (Mapping, pd.Series)):
        name = groups.name if isinstance(groups, pd.Series) and groups.name else "group"
        lookup = dict(groups.items())
        absent = [s for s in studies if s not in lookup]
        if absent:
            raise ValueError(f"groups: no group for the studies {absent}")
        return [str(lookup[s]) for s in studies], str(name)
    labels = [str(g) for g in groups]
    if len(labels) != len(studies):
        raise ValueError(f"groups: {len(labels)} labels for the {len(studies)} studies of the "
                         f"result")
    return labels, "group"


class Jackknife(ParamsMixin):
    """Leave-one-study-out (or leave-one-group-out) sensitivity of the clusters of a fit.

    Every study (or every group of studies) is left out in turn and the model re-fitted from
    the result's bound maps with the estimator that produced it (each distinct set of studies
    once); each cluster of the full analysis "survives" a re-fit when a same-direction cluster
    overlaps it. The SDM manual's jackknife sensitivity analysis (Radua & Mataix-Cols 2009),
    as NiMARE's ``diagnostics.Jackknife`` transforms a result (Salo et al. 2023); He et al.
    (2024) also left out one disorder at a time (``groups="disorder"``).

    Parameters
    ----------
    groups : None, str, mapping or sequence
        ``None`` (default): leave out one study at a time (family ``"leave-one-out"``). A
        column of the result's study table (e.g. ``"disorder"``; family
        ``"leave-one-disorder-out"``), a mapping (dict, or a pandas Series indexed by study)
        from study to group (family named by the Series' name, else ``"group"``), or one label
        per study of the result: leave out one group at a time.
    p_threshold, peak_z, min_voxels, local_peak_distance_mm, connectivity : optional
        Thresholds of :func:`analysis.sdm.clusters.threshold_clusters` (default
        :data:`analysis.sdm.clusters.THRESHOLDS`).
    progress : bool
        Show a progress bar over the re-fits.

    Notes
    -----
    :meth:`transform` adds the tables ``jackknife`` (one row per re-fit and cluster:
    :data:`analysis.sdm.jackknife.JACKKNIFE_COLUMNS`) and ``jackknife_summary`` to the result
    it returns, and an unfitted copy of itself to ``diagnostics``. A result that already has a
    ``jackknife`` table (e.g. leave-one-study-out, then leave-one-disorder-out) gets the new
    family's rows appended, and the summary covers every family. The transformer keeps no
    state.

    References
    ----------
    Radua J, Mataix-Cols D (2009). Voxel-wise meta-analysis of grey matter changes in
    obsessive-compulsive disorder. Br J Psychiatry 195:393-402.
    Salo T et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture
    Neuro 3. doi:10.52294/001c.87681.
    """

    def __init__(self, groups=None, p_threshold: float = THRESHOLDS["p_threshold"],
                 peak_z: float = THRESHOLDS["peak_z"],
                 min_voxels: int = THRESHOLDS["min_voxels"],
                 local_peak_distance_mm: float = THRESHOLDS["local_peak_distance_mm"],
                 connectivity: int = THRESHOLDS["connectivity"], progress: bool = False):
        self.groups = groups
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
        """A copy of ``result`` with the jackknife tables (see Notes).

        Parameters
        ----------
        result : MetaResult
            A mean-model fit that kept its bound maps (:meth:`SDMPSI.fit` or
            :meth:`SDMPSI.fit_preprocessed`).

        Returns
        -------
        MetaResult
            A new result; ``result`` is not modified.
        """
        from analysis.sdm import jackknife as jk

        est, bounds = getattr(result, "estimator", None), getattr(result, "bounds", None)
        if est is None or bounds is None:
            raise ValueError("the result has no estimator or bound maps (use SDMPSI.fit or "
                             "SDMPSI.fit_preprocessed)")
        if result.X.shape[1] > 1:
            raise ValueError("the jackknife re-fits the mean model only (no covariates)")
        thr = self._thresholds()
        base = threshold_clusters(result.maps["z"], result.space, local_peaks=False, **thr)
        studies = list(bounds.studies)
        if self.groups is None:
            subsets, family = jk.leave_one_out_sets(studies), "leave-one-out"
        else:
            labels, name = _group_labels(self.groups, result)
            subsets = jk.leave_group_out_sets(studies, labels)
            family = f"leave-one-{name}-out"
        refit = est._parameter_copy().set_params(keep_imputations=False, progress=False)

        def fit(idx):
            return refit.fit_bounds(bounds.lower[idx], bounds.upper[idx], bounds.n1[idx],
                                    bounds.n2[idx], result.space,
                                    studies=[studies[i] for i in idx])

        fits = jk.refit_subsets(fit, studies, subsets, progress=self.progress)
        table = jk.cluster_survival(base.labels, base.peaks(),
                                    {k: r.maps["z"] for k, r in fits.items()}, result.space,
                                    family, {k: len(r.n1) for k, r in fits.items()}, **thr)
        if "jackknife" in result.tables:
            table = pd.concat([result.tables["jackknife"], table], ignore_index=True)
        out = _copy(result)
        out.tables["jackknife"] = table
        out.tables["jackknife_summary"] = jk.survival_summary(table)
        out.diagnostics.append(self._parameter_copy())
        return out
