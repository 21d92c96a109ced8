"""NiMARE-style SDM-PSI estimator: bounds -> MetaNSUE MLE -> imputation -> RE + Rubin maps.

``SDMPSI(**params).fit(dataset, mask_img=None)`` runs, at every voxel of the mask, the steps of
SDM-PSI before permutation (Albajes-Eizagirre et al. 2019):

1. pre-processing: lower/upper Hedges-g bound maps (:func:`analysis.sdm.maps.preprocess.preprocess`);
2. MetaNSUE maximum likelihood (coefficients with conservative leave-n-out, then tau2;
   :func:`analysis.sdm.statistics.metansue.mle.censored_mle`);
3. ``imputations`` study images per study (:func:`analysis.sdm.statistics.metansue.imputation.impute`);
4. random-effects meta-analysis / meta-regression of every imputed data set, between-study
   variance by DerSimonian-Laird (SDM-PSI's default) or REML (its ``AccurateHeterogeneity``),
   variance of each imputed value from the exact Hedges-g variance, every design compiled
   (:mod:`analysis.sdm.statistics.re_kernels`, shared with the permutation test and checked
   against :func:`analysis.sdm.statistics.random_effects.fit_random_effects`); covariates enter
   centred, so the intercept is the mean at the covariates' averages (as SDM-PSI);
5. Rubin's rules (those of :mod:`analysis.sdm.statistics.rubin`, in the same kernels) -> maps
   ``g, var, z, tau2, i2, h2, q``.

Permutation inference (PSI, FWE, TFCE) is done downstream (:mod:`analysis.sdm.inference.permutation`)
from what :class:`MetaResult` keeps (bounds, MLE maps, imputed images, design).

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage
186:174-184.
Radua J et al. (2015). JAMA Psychiatry 72:1243-1251 (MetaNSUE).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from analysis.sdm.base import ParamsMixin
from analysis.sdm.maps.space import MaskSpace
from analysis.sdm.rng import derive_rng
from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.hypothesis import hypothesis_row
from analysis.sdm.statistics.metansue.imputation import NoiseFields, impute
from analysis.sdm.statistics.metansue.mle import censored_mle
from analysis.sdm.statistics.metansue.settings import MLE_METHODS
from analysis.sdm.statistics.model import check_heterogeneity
from analysis.sdm.statistics.random_effects import q_to_z
from analysis.sdm.statistics.re_kernels import pooled_fit

LGR = logging.getLogger(__name__)

#: name of the imputation stream, ``derive_rng(seed, IMPUTE_STREAM)``
IMPUTE_STREAM = "sdm/impute"

HETEROGENEITY_NAMES = {"dl": "DerSimonian-Laird", "reml": "restricted maximum-likelihood"}

MAP_NAMES = ("g", "var", "z", "tau2", "i2", "h2", "q", "q_z", "p", "p_pos", "p_neg")


@dataclass
class MetaResult:
    """Result of :meth:`SDMPSI.fit` (NiMARE's ``MetaResult`` shape, Salo et al. 2023).

    Attributes
    ----------
    maps : dict of str -> ndarray (V,)
        ``g`` (pooled hypothesis coefficient, Hedges g for a mean), ``var`` (Rubin variance),
        ``z`` (SDM-Z = g / sqrt(var)), ``tau2``, ``i2`` (I2 in percent, like SDM's ``_h_i2``),
        ``h2``, ``q`` (pooled Q), ``q_z``, ``p`` (one-tailed p of the observed direction,
        ``1 - Phi(|z|)``), ``p_pos`` (``1 - Phi(z)``), ``p_neg`` (``Phi(z)``); correctors add
        theirs (:data:`analysis.sdm.inference.correct.CORRECTED_MAPS`).
    space : MaskSpace
        The voxel space of the maps.
    df : int
        Heterogeneity degrees of freedom ``k - p``.
    studies : list of str
        The studies of the fit (after any left out for a missing covariate value).
    n1, n2 : ndarray (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    X : ndarray (k, p)
        Design (intercept and centred covariates); ``C`` : ndarray (p,), the hypothesis row.
    mle : dict
        MetaNSUE MLE: ``beta`` (V, p), ``tau2`` (V,), ``discarded``, ``n_leave_out``, ``X``, ``C``.
    bounds : Bounds or None
        The pre-processing bound maps of the studies of the fit (``lower``, ``upper``: (k, V)
        float32); set by :meth:`SDMPSI.fit` and :meth:`SDMPSI.fit_preprocessed`, needed by
        :class:`~analysis.sdm.diagnostics.jackknife.Jackknife`.
    imputations : ndarray (m, k, V) float32 or None
        Imputed study images (Hedges g); their variances are ``k1 + k2 g^2``
        (:func:`analysis.sdm.statistics.hedges.variance_coefficients`); needed by
        :class:`~analysis.sdm.inference.correct.PSICorrector`.
    params : dict
        The checked parameters of the fit, and ``design_columns`` when fitted from a table.
    description_ : str
        Methods text with citations.
    timings : dict
        Seconds per step.
    tables : dict of str -> pandas.DataFrame
        Tables added downstream (e.g. ``permutation_maxima`` by
        :class:`~analysis.sdm.inference.correct.PSICorrector`, ``jackknife`` and ``jackknife_summary``
        by :class:`~analysis.sdm.diagnostics.jackknife.Jackknife`).
    estimator : SDMPSI
        An unfitted estimator with the parameters that produced the result (it holds no
        earlier result; the diagnostics re-fit with it).
    corrector : PSICorrector or None
        The corrector whose maps the result holds (an unfitted copy), as NiMARE's
        ``MetaResult.corrector``.
    diagnostics : list
        The diagnostics applied (unfitted copies, e.g. :class:`~analysis.sdm.diagnostics.jackknife.Jackknife`),
        as NiMARE's ``MetaResult.diagnostics``.
    permutation_ : PermutationResult or None
        The permutation test behind the corrected maps
        (:class:`analysis.sdm.inference.permutation.PermutationResult`: null maxima, the identity
        permutation's maps, timings); ``None`` until :class:`~analysis.sdm.inference.correct.PSICorrector`
        runs.
    dropped_studies : list of str
        Studies left out of the fit for a missing covariate value (``SDMPSI(missing="drop")``).
    study_table : pandas.DataFrame or None
        The study-table rows of the studies fitted, in their order (when the fit had a table:
        :meth:`SDMPSI.fit`, :meth:`SDMPSI.fit_preprocessed`); e.g. the groups of
        ``Jackknife(groups="disorder")``.
    jackknife_refits : dict
        The z maps of the study subsets :class:`~analysis.sdm.diagnostics.jackknife.Jackknife`
        has re-fitted, by the subset's studies: a later jackknife of the same result (e.g. one
        group out after one study out) does not re-fit a subset again (leaving out a group
        of one study is leaving out that study).
    noise : NoiseFields or None
        The imputation noise fields the fit was given (:meth:`SDMPSI.noise_fields`), which
        :class:`~analysis.sdm.diagnostics.jackknife.Jackknife` passes on to its re-fits.
    """

    maps: dict
    space: MaskSpace
    df: int
    studies: list
    n1: np.ndarray
    n2: np.ndarray
    X: np.ndarray
    C: np.ndarray
    mle: dict
    bounds: object = None
    imputations: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    description_: str = ""
    timings: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    estimator: object = None
    corrector: object = None
    diagnostics: list = field(default_factory=list)
    permutation_: object = None
    dropped_studies: list = field(default_factory=list)
    study_table: object = None
    jackknife_refits: dict = field(default_factory=dict)
    noise: object = None

    def get_map(self, name: str, return_type: str = "image"):
        """The map ``name``: a NIfTI image on the analysis grid (``return_type="image"``) or the
        vector over the mask's voxels (``"array"``), as NiMARE's ``MetaResult.get_map``.
        """
        if name not in self.maps:
            raise KeyError(f"no map {name!r}; available: {sorted(self.maps)}")
        if return_type == "array":
            return self.maps[name]
        if return_type != "image":
            raise ValueError(f"return_type must be 'image' or 'array', got {return_type!r}")
        return self.space.to_img(self.maps[name])

    def extract(self, xyz):
        """Per-study values and the pooled model at the mask voxel nearest ``xyz`` (SDM-PSI's
        extract; :func:`analysis.sdm.diagnostics.voxel.extract`).

        Parameters
        ----------
        xyz : array-like (3,)
            MNI coordinate in mm.

        Returns
        -------
        analysis.sdm.diagnostics.voxel.VoxelExtract
            ``studies`` (each study's mean and SD of its imputed g, variance, 95 % interval,
            random-effects weight, exact or censored), ``pooled`` (g, var, z, p, tau2, I2, H2,
            Q), ``to_frame()`` (tidy table) and ``to_sdm_text()`` (SDM-PSI's layout).

        Raises
        ------
        ValueError
            ``xyz`` is outside the mask.
        """
        from analysis.sdm.diagnostics.voxel import extract

        return extract(self, xyz)

    def save_maps(self, output_dir=".", prefix: str = "", prefix_sep: str = "_",
                  names=None) -> list:
        """Write ``[<prefix><prefix_sep>]<name>.nii.gz`` for each map (atomic writes).

        Returns the written paths (NiMARE's ``MetaResult.save_maps``).
        """
        from analysis.sdm.inputs.io import save_nifti

        out_dir = Path(output_dir)
        lead = f"{prefix}{prefix_sep}" if prefix else ""
        paths = []
        for name in names or self.maps:
            path = out_dir / f"{lead}{name}.nii.gz"
            save_nifti(path, self.get_map(name))
            paths.append(path)
        return paths

    def save_tables(self, output_dir=".", prefix: str = "", prefix_sep: str = "_",
                    names=None) -> list:
        """Write each table of ``tables`` as ``[<prefix><prefix_sep>]<name>.tsv`` (atomic)."""
        from analysis.sdm.inputs.io import write_tsv

        out_dir = Path(output_dir)
        lead = f"{prefix}{prefix_sep}" if prefix else ""
        paths = []
        for name in names or self.tables:
            path = out_dir / f"{lead}{name}.tsv"
            write_tsv(path, self.tables[name])
            paths.append(path)
        return paths


def copy_result(result: MetaResult) -> MetaResult:
    """A shallow copy of a result with its own ``maps``, ``tables`` and ``diagnostics``: what a
    transformer (:class:`~analysis.sdm.inference.correct.PSICorrector`,
    :class:`~analysis.sdm.diagnostics.jackknife.Jackknife`) returns, leaving its input as it was.
    """
    out = copy.copy(result)
    out.maps = dict(result.maps)
    out.tables = dict(result.tables)
    out.diagnostics = list(getattr(result, "diagnostics", []))
    return out


def analyse_imputations(imputed, n1, n2=None, X=None, C=None, heterogeneity: str = "dl",
                        max_iter: int | None = None, tol: float | None = None,
                        n_jobs: int = 1, progress: bool = False) -> dict:
    """Random-effects model of every imputed data set, pooled with Rubin's rules.

    Parameters
    ----------
    imputed : ndarray, shape (m, k, V)
        Imputed study effect sizes (Hedges g).
    n1, n2 : array-like (k,)
        Sample sizes (exact variance ``v(g) = k1 + k2 g^2`` of each imputed value).
    X : ndarray (k, p), optional; C : array-like (p,), optional
        Design and hypothesis row.
    heterogeneity : {"dl", "reml"}
        Between-study variance of each imputation: DerSimonian-Laird (SDM-PSI's default) or
        REML (SDM-PSI's ``AccurateHeterogeneity``).
    max_iter, tol : optional
        REML updates and tolerance (default :data:`analysis.sdm.statistics.random_effects.REML_MAX_ITER` / ``REML_TOL``).
    n_jobs : int
        Threads over voxel chunks (results do not depend on it).
    progress : bool
        Report the voxels done.

    Returns
    -------
    dict of (V,) arrays
        ``g, var, z, tau2, i2`` (fraction), ``h2, q, q_p`` and ``df`` (int): the compiled
        kernel of the design (:func:`analysis.sdm.statistics.re_kernels.pooled_fit`).
    """
    from analysis.sdm.statistics.random_effects import _defaults

    heterogeneity = check_heterogeneity(heterogeneity)
    d_iter, d_tol = _defaults()
    max_iter = d_iter if max_iter is None else int(max_iter)
    tol = d_tol if tol is None else float(tol)
    imputed = np.asarray(imputed)
    k = imputed.shape[1]
    k1, k2 = variance_coefficients(n1, n2)
    Xd = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    Cd = hypothesis_row(C, Xd.shape[1])
    return pooled_fit(imputed, k1, k2, Xd, Cd, heterogeneity=heterogeneity, max_iter=max_iter,
                      tol=tol, n_jobs=n_jobs, progress=progress)


#: what :class:`SDMPSI` does with a study whose covariate value is missing (``missing=``)
MISSING_POLICIES = ("raise", "drop")


class MissingCovariateWarning(UserWarning):
    """Studies were left out of a fit because a covariate value is missing."""


def complete_cases(studies: pd.DataFrame, covariates=None, missing: str = "raise"
                   ) -> np.ndarray:
    """The studies with a value for every covariate, under the missing-value policy.

    One policy for every design of the engine (:class:`SDMPSI` and
    :func:`analysis.sdm.diagnostics.metaregression.covariate_design`): with ``missing="raise"`` a missing
    value (NaN, None, an empty cell) is an error naming the first such row and column; with
    ``"drop"`` the studies with a missing value in any covariate are left out (complete-case
    analysis) and a :class:`MissingCovariateWarning` lists them.

    Parameters
    ----------
    studies : pandas.DataFrame
        Study table (column ``study`` names the studies in the warning).
    covariates : list of str, optional
        Columns of the design.
    missing : {"raise", "drop"}
        The policy.

    Returns
    -------
    numpy.ndarray of bool, shape (k,)
        The studies kept.

    Raises
    ------
    analysis.sdm.errors.DataError
        A covariate is not a column, or (``"raise"``) has a missing value.
    """
    from analysis.sdm.errors import DataError

    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    keep = np.ones(len(studies), dtype=bool)
    for cov in covariates or []:
        if cov not in studies.columns:
            raise DataError("study table", f"covariate {cov!r} is not a column", field=cov)
        na = studies[cov].isna().to_numpy()
        if na.any() and missing == "raise":
            row = int(np.flatnonzero(na)[0]) + 1
            raise DataError("study table", f"covariate {cov!r} has missing values (with "
                            f"missing='drop' such studies are left out)", row=row, field=cov)
        keep &= ~na
    if not keep.all():
        ids = (studies["study"].astype(str).to_numpy() if "study" in studies.columns
               else np.array([f"row {i + 1}" for i in range(len(studies))]))
        warnings.warn(MissingCovariateWarning(
            f"{int((~keep).sum())} of {len(keep)} studies left out for a missing value of "
            f"{', '.join(covariates)}: {', '.join(ids[~keep])}"), stacklevel=2)
    return keep


def design_matrix(studies: pd.DataFrame, covariates=None, centre: bool = True
                  ) -> tuple[np.ndarray, list]:
    """Design ``[1, covariates]`` from study-table columns (numeric; text: dummy coding).

    Covariate columns are centred on their means (``centre``, default): the intercept is then
    the effect at the covariates' averages, SDM-PSI's covariate-adjusted mean (its ``extract``
    output reports the intercept at the covariate mean, Li et al. 2023). Slopes do not change.
    Studies with missing values must have been left out first (:func:`complete_cases`).

    Raises
    ------
    analysis.sdm.errors.DataError
        A covariate column is missing, has missing values or fewer than two distinct values,
        or (with covariates) there are no more studies than design columns.
    """
    from analysis.sdm.errors import DataError

    complete_cases(studies, covariates, missing="raise")
    cols = [np.ones(len(studies))]
    names = ["intercept"]
    for cov in covariates or []:
        col = studies[cov]
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all():
            new = [num.to_numpy(dtype=float)]
            names.append(cov)
        else:
            levels = sorted(col.astype(str).unique())
            new = [(col.astype(str) == lev).to_numpy(dtype=float) for lev in levels[1:]]
            names.extend(f"{cov}[{lev}]" for lev in levels[1:])
        if not new or any(np.ptp(c) == 0 for c in new):
            raise DataError("study table", f"covariate {cov!r} has fewer than 2 distinct values "
                            f"among the {len(studies)} studies", field=cov)
        cols.extend(new)
    if len(cols) > 1 and len(studies) <= len(cols):
        raise DataError("study table", f"{len(studies)} studies for a design of {len(cols)} "
                        f"columns ({', '.join(names)}): too few studies")
    if centre:  # each column on its own mean (a 1-D sum: the same bits for every design)
        cols = [cols[0]] + [c - c.mean() for c in cols[1:]]
    return np.column_stack(cols), names


def parse_hypothesis(hypothesis, p: int) -> np.ndarray:
    """Hypothesis row from None (intercept), a sequence, or SDM's ``"0+1+0"`` string
    (:func:`analysis.sdm.statistics.hypothesis.hypothesis_row`).
    """
    return hypothesis_row(hypothesis, p)


class SDMPSI(ParamsMixin):
    """SDM-PSI mean analysis / meta-regression (without permutations), NiMARE-style.

    ``__init__`` only stores the parameters (scikit-learn's and nilearn's convention,
    Buitinck et al. 2013); :meth:`fit` checks them and returns a :class:`MetaResult` (also kept
    as ``results_``). ``get_params(deep=True)``, ``set_params`` and ``sklearn.base.clone`` work
    as for a scikit-learn estimator (:class:`analysis.sdm.base.ParamsMixin`). The defaults are
    SDM-PSI v6.21's, with the settings validated against its run of Enge et al. (2021): its own
    grey-matter mask (:func:`analysis.sdm.maps.space.sdm_gm_mask`, a public file fetched on first use
    into the user cache, :mod:`analysis.sdm.datasets`) and the kernel template fitted on its
    bound maps (``"enge_fit"``, :mod:`analysis.sdm.maps.templates`, shipped with the engine).

    Parameters
    ----------
    fwhm, anisotropy : float
        Kernel FWHM (mm) and degree of anisotropy (20 and 1, as SDM-PSI).
    imputations : int
        Number of imputed study images (50, as SDM-PSI).
    unknown_peak_mode : {"corrected", "sdm621"}
        Effect of peaks without a statistic (:mod:`analysis.sdm.maps.preprocess`).
    kernel_template : str or numpy.ndarray
        Stretch template of the anisotropic kernel: a name of :mod:`analysis.sdm.maps.templates`
        (default ``"enge_fit"``, fitted on SDM-PSI's own bound maps and shipped with the engine;
        ``"gray_matter"``, the tissue model, agrees less with SDM-PSI) or a (13, X, Y, Z) array
        (:mod:`analysis.kernel_template`).
    path_model, combine : str
        Kernel path model and rule for several peaks (:func:`analysis.sdm.maps.preprocess.preprocess`).
    outside_stretch, outside_radius : float
        Peaks outside the mask (:func:`analysis.sdm.maps.kernel.make_kernel`).
    covariates : list of str, optional
        Study-table columns added to the design (intercept always included), centred on their
        means so that the intercept is the mean at the covariates' averages (as SDM-PSI).
    hypothesis : optional
        Hypothesis row over ``[intercept, covariates...]`` (default: the intercept).
    missing : {"raise", "drop"}
        A study without a value of a covariate: ``"raise"`` (default) stops the fit naming the
        row and column; ``"drop"`` leaves such studies out (complete-case analysis), warns
        (:class:`MissingCovariateWarning`) and lists them in ``MetaResult.dropped_studies``
        (:func:`complete_cases`), e.g. for a meta-regression on a covariate some studies do
        not report. SDM-PSI's manual states no rule for missing values; this is the engine's.
    leave_n_out : "auto" or int
        Conservative leave-n-out of the MLE (:func:`analysis.sdm.statistics.metansue.mle.censored_mle`).
    mle_method : {"fast", "exact"}
        Path of the MLE's compiled kernels (``method`` of
        :func:`~analysis.sdm.statistics.metansue.mle.censored_mle`): ``"fast"`` (default;
        Brent's tau2 search, pruned leave-n-out candidates) or ``"exact"`` (the fixed-count
        golden section, every candidate of a design refitted), kept for validation.
    heterogeneity : {"dl", "reml"}
        Between-study variance of each imputation's model: DerSimonian-Laird (SDM-PSI's default,
        ``AccurateHeterogeneity=false``) or REML (``AccurateHeterogeneity=true``).
    seed : int
        Seed of the imputations (stream ``derive_rng(seed, "sdm/impute")``,
        :mod:`analysis.sdm.rng`).
    n_jobs : int
        Threads for the meta-analysis of the imputations.
    keep_imputations : bool
        Keep the (m, k, V) imputed images on the result (needed for permutations).
    progress : bool
        Show progress bars.

    Attributes
    ----------
    results_ : MetaResult
        The result of the last fit (set by :meth:`fit`, :meth:`fit_preprocessed` and
        :meth:`fit_bounds`; absent before). Its ``estimator`` is an unfitted copy of this
        estimator, so a refit replaces the earlier result instead of keeping it alive.

    References
    ----------
    Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). NeuroImage 186:174-184 (SDM-PSI).
    Buitinck L et al. (2013). API design for machine learning software: experiences from the
    scikit-learn project. arXiv:1309.0238.
    Salo T et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture
    Neuro 3. doi:10.52294/001c.87681.

    Examples
    --------
    >>> est = SDMPSI(imputations=10, seed=0)            # doctest: +SKIP
    >>> result = est.fit(SDMDataset.from_sdm_project(folder))  # doctest: +SKIP
    >>> result.get_map("z")                              # doctest: +SKIP
    """

    def __init__(self, fwhm: float = 20.0, anisotropy: float = 1.0, imputations: int = 50,
                 unknown_peak_mode: str = "corrected", kernel_template="enge_fit",
                 path_model: str = "gaussian", combine: str = "weighted",
                 outside_stretch: float = 1.5, outside_radius: float = 16.0,
                 covariates=None, hypothesis=None, missing: str = "raise", leave_n_out="auto",
                 mle_method: str = "fast", heterogeneity: str = "dl", seed: int = 0, n_jobs: int = 1,
                 keep_imputations: bool = True, progress: bool = False):
        self.fwhm = fwhm
        self.anisotropy = anisotropy
        self.imputations = imputations
        self.unknown_peak_mode = unknown_peak_mode
        self.kernel_template = kernel_template
        self.path_model = path_model
        self.combine = combine
        self.outside_stretch = outside_stretch
        self.outside_radius = outside_radius
        self.covariates = covariates
        self.hypothesis = hypothesis
        self.missing = missing
        self.leave_n_out = leave_n_out
        self.mle_method = mle_method
        self.heterogeneity = heterogeneity
        self.seed = seed
        self.n_jobs = n_jobs
        self.keep_imputations = keep_imputations
        self.progress = progress

    def _checked(self) -> dict:
        """Parameters checked and typed (called by :meth:`fit`)."""
        from analysis.sdm.maps.preprocess import COMBINE_RULES, UNKNOWN_PEAK_MODES

        p = self.get_params(deep=False)
        p["fwhm"], p["anisotropy"] = float(p["fwhm"]), float(p["anisotropy"])
        if p["fwhm"] <= 0 or not 0.0 <= p["anisotropy"] <= 1.0:
            raise ValueError(f"fwhm must be > 0 and anisotropy in [0, 1], got {p['fwhm']}, "
                             f"{p['anisotropy']}")
        p["imputations"] = int(p["imputations"])
        if p["imputations"] < 2:
            raise ValueError("at least 2 imputations are needed for Rubin's rules")
        if p["unknown_peak_mode"] not in UNKNOWN_PEAK_MODES:
            raise ValueError(f"unknown_peak_mode must be one of {UNKNOWN_PEAK_MODES}")
        if p["combine"] not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}")
        if p["missing"] not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {p['missing']!r}")
        p["heterogeneity"] = check_heterogeneity(p["heterogeneity"])
        if p["mle_method"] not in MLE_METHODS:
            raise ValueError(f"mle_method must be one of {MLE_METHODS}, got {p['mle_method']!r}")
        p["covariates"] = list(p["covariates"] or [])
        p["seed"], p["n_jobs"] = int(p["seed"]), int(p["n_jobs"])
        return p

    def fit(self, dataset, mask_img=None, recreation_mask=None) -> MetaResult:
        """Pre-process ``dataset`` (an :class:`~analysis.sdm.inputs.dataset.SDMDataset`) and fit.

        Parameters
        ----------
        dataset : SDMDataset
            Studies, peaks and optionally a mask.
        mask_img : nibabel image, optional
            Analysis mask on SDM-PSI's 2 mm grid; default the dataset's (``dataset.mask``, e.g.
            the ``sdm_mask.nii.gz`` of an SDM project folder), else SDM-PSI's own grey-matter
            mask ``gray_matter_2mm`` (:func:`analysis.sdm.maps.space.sdm_gm_mask`).
        recreation_mask : nibabel image, optional
            Whole mask the study maps are recreated on when ``mask_img`` is a region of it
            (:func:`analysis.sdm.maps.preprocess.recreation_space`).

        Returns
        -------
        MetaResult
        """
        from analysis.sdm.maps.preprocess import preprocess
        from analysis.sdm.maps.space import sdm_gm_mask

        p = self._checked()
        if mask_img is None:
            mask_img = getattr(dataset, "mask", None)
        space = MaskSpace(sdm_gm_mask() if mask_img is None else mask_img)
        t0 = time.perf_counter()
        bounds = preprocess(dataset, space, fwhm=p["fwhm"], anisotropy=p["anisotropy"],
                            unknown_peak_mode=p["unknown_peak_mode"],
                            template=p["kernel_template"], path_model=p["path_model"],
                            combine=p["combine"], outside_stretch=p["outside_stretch"],
                            outside_radius=p["outside_radius"],
                            recreation_mask=recreation_mask, progress=p["progress"])
        t_pp = time.perf_counter() - t0
        res = self.fit_preprocessed(bounds, dataset.studies)
        res.timings = {"preprocess_s": round(t_pp, 3), **res.timings}
        n_maps = len([s for s in getattr(dataset, "images", None) or {} if s in res.studies])
        if n_maps:
            res.description_ += (f" {n_maps} of the {len(res.studies)} studies entered as "
                                 "statistical maps: exact Hedges g wherever the map has a value, "
                                 "the bounds of their peaks elsewhere (Radua et al., 2012).")
        return res

    def noise_fields(self, space: MaskSpace) -> NoiseFields:
        """The imputation noise fields of this estimator's stream on ``space``, to share between
        fits (:meth:`fit_bounds`, :meth:`fit_preprocessed` ``noise=``).

        Every fit with the same ``seed``, ``imputations`` and ``fwhm`` on ``space`` draws the
        same fields for its ``i``-th study, whatever the studies
        (:class:`~analysis.sdm.statistics.metansue.imputation.NoiseFields`): fits of subsets of
        one set of studies given one such object draw each position's fields once (the
        jackknife's, meta-regressions' and subgroups' re-fits), with the same results as
        without it.
        """
        p = self._checked()
        return NoiseFields(derive_rng(p["seed"], IMPUTE_STREAM), p["imputations"], space,
                           p["fwhm"], key=self._noise_key(p))

    @staticmethod
    def _noise_key(p: dict) -> tuple:
        return (IMPUTE_STREAM, int(p["seed"]), int(p["imputations"]), float(p["fwhm"]))

    def fit_preprocessed(self, bounds, study_table=None, noise=None) -> MetaResult:
        """Fit from pre-processed bound maps, e.g. those an earlier fit kept.

        The design comes from ``study_table`` under the ``missing`` policy
        (:func:`complete_cases`, :func:`design_matrix`); the result keeps the bound maps of the
        studies fitted, so the diagnostics (:class:`~analysis.sdm.diagnostics.jackknife.Jackknife`) can
        re-fit subsets of them.

        Parameters
        ----------
        bounds : analysis.sdm.maps.preprocess.Bounds
            Bound maps of the studies (:func:`analysis.sdm.maps.preprocess.preprocess`).
        study_table : pandas.DataFrame, optional
            Study table with a ``study`` column and the covariates; needed with covariates.
        noise : NoiseFields, optional
            Imputation noise fields shared with other fits (:meth:`noise_fields`).

        Returns
        -------
        MetaResult
        """
        from analysis.sdm.errors import DataError

        p = self._checked()
        studies = list(bounds.studies)
        table = None
        if study_table is not None:
            absent = sorted(set(studies) - set(study_table["study"]))
            if absent:
                raise DataError("study table", f"no row for the studies {absent}",
                                field="study")
            table = study_table.set_index("study").loc[studies].reset_index()
        if p["covariates"]:
            if table is None:
                raise ValueError(f"covariates {p['covariates']} need the study table")
            keep = complete_cases(table, p["covariates"], p["missing"])
            X, names = design_matrix(table[keep].reset_index(drop=True), p["covariates"])
        else:
            keep = np.ones(len(studies), dtype=bool)
            X, names = np.ones((len(studies), 1)), ["intercept"]
        if not keep.all():
            bounds = bounds.subset([s for s, k in zip(studies, keep, strict=True) if k])
        res = self.fit_bounds(bounds.lower, bounds.upper, bounds.n1, bounds.n2, bounds.space,
                              X=X, studies=list(bounds.studies), noise=noise)
        res.bounds = bounds
        res.params["design_columns"] = names
        res.study_table = None if table is None else table[keep].reset_index(drop=True)
        res.dropped_studies = [s for s, k in zip(studies, keep, strict=True) if not k]
        if res.dropped_studies:
            res.description_ += (f" {len(res.dropped_studies)} studies without a value of the "
                                 f"covariates were left out: {', '.join(res.dropped_studies)}.")
        return res

    def fit_bounds(self, lower, upper, n1, n2, space: MaskSpace, X=None, studies=None,
                   noise=None) -> MetaResult:
        """Fit from ready-made bound maps (k, V), e.g. SDM-PSI's own ``pp/`` maps.

        Parameters
        ----------
        lower, upper : array-like, shape (k, V)
            Bound maps (Hedges g).
        n1, n2 : array-like, shape (k,)
            Sample sizes (``n2`` None or NaN for one-sample studies).
        space : MaskSpace
            The voxel space of the maps.
        X : array-like, shape (k, p), optional
            Design (default: the intercept); the ``covariates`` parameter is not read here.
        studies : list of str, optional
            Study ids.
        noise : NoiseFields, optional
            Imputation noise fields shared with other fits (:meth:`noise_fields`; drawn by an
            estimator with this one's ``seed``, ``imputations`` and ``fwhm``, on ``space``).

        Returns
        -------
        MetaResult
            Without bound maps (``bounds`` is None): use :meth:`fit_preprocessed` for a result
            the diagnostics can re-fit.
        """
        p = self._checked()
        lower = np.asarray(lower, dtype=np.float32)
        upper = np.asarray(upper, dtype=np.float32)
        k, nv = lower.shape
        if nv != space.n_voxels:
            raise ValueError(f"bounds have {nv} voxels but the mask has {space.n_voxels}")
        n1 = np.asarray(n1, dtype=float)
        n2 = np.full(k, np.nan) if n2 is None else np.asarray(n2, dtype=float)
        X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
        C = parse_hypothesis(p["hypothesis"], X.shape[1])
        timings = {}
        t = time.perf_counter()
        mle = censored_mle(lower, upper, n1, n2, X, C, leave_n_out=p["leave_n_out"],
                           progress=p["progress"], method=p["mle_method"])
        timings["mle_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        if noise is not None and not noise.matches(self._noise_key(p), p["imputations"], space):
            raise ValueError(f"the noise fields were drawn for {noise.key} on a space of "
                             f"{noise.space.n_voxels} voxels, this fit draws "
                             f"{self._noise_key(p)} on {space.n_voxels} voxels")
        rng = derive_rng(p["seed"], IMPUTE_STREAM)
        imps = impute(lower, upper, mle, n1, n2, space, imputations=p["imputations"], rng=rng,
                      fwhm_mm=p["fwhm"], progress=p["progress"], noise=noise)
        timings["impute_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        pooled = analyse_imputations(imps, n1, n2, X, C, heterogeneity=p["heterogeneity"],
                                     n_jobs=p["n_jobs"], progress=p["progress"])
        timings["meta_s"] = round(time.perf_counter() - t, 3)
        maps = maps_from_pooled(pooled)
        params = {k: p[k] for k in ("fwhm", "anisotropy", "imputations", "unknown_peak_mode",
                                    "covariates", "hypothesis", "leave_n_out", "heterogeneity",
                                    "seed")}
        self.results_ = MetaResult(
            maps=maps, space=space, df=int(pooled["df"]),
            studies=list(studies) if studies is not None else [f"study{i}" for i in range(k)],
            n1=n1, n2=n2, X=X, C=C, mle=mle, imputations=imps if p["keep_imputations"] else None,
            params=params, description_=describe(params, k, space.n_voxels), timings=timings,
            estimator=self._parameter_copy(), noise=noise)
        return self.results_


def maps_from_pooled(pooled: dict) -> dict:
    """SDM-style float32 maps from :func:`analyse_imputations` output."""
    z = pooled["z"]
    maps = {
        "g": pooled["g"], "var": pooled["var"], "z": z, "tau2": pooled["tau2"],
        "i2": 100.0 * pooled["i2"], "h2": pooled["h2"], "q": pooled["q"],
        "q_z": q_to_z(pooled["q"], pooled["df"]),
        "p": norm.sf(np.abs(z)), "p_pos": norm.sf(z), "p_neg": norm.cdf(z),
    }
    return {k: np.asarray(v, dtype=np.float32) for k, v in maps.items()}


def describe(params: dict, k: int, n_voxels: int) -> str:
    """Methods text of a fit (with citations)."""
    cov = ", ".join(params["covariates"]) or "none"
    return (
        f"Voxel-wise meta-analysis of {k} studies over {n_voxels} voxels with an open "
        f"re-implementation of SDM-PSI (Albajes-Eizagirre et al., 2019): lower/upper Hedges-g "
        f"bound maps from the peaks (kernel FWHM {params['fwhm']:g} mm, anisotropy "
        f"{params['anisotropy']:g}); MetaNSUE maximum-likelihood estimation with conservative "
        f"leave-n-out ({params['leave_n_out']}) (Radua et al., 2015); {params['imputations']} "
        f"imputed study images drawn from truncated normals with spatially correlated noise; "
        f"random-effects models with {HETEROGENEITY_NAMES[params['heterogeneity']]} "
        f"between-study variance (covariates: {cov}, centred) combined with Rubin's rules; "
        f"SDM-Z = g / sqrt(var). Seed {params['seed']}."
    )
