"""NiMARE-style SDM-PSI estimator: bounds -> MetaNSUE MLE -> imputation -> RE + Rubin maps.

``SDMPSI(**params).fit(dataset, mask_img=None)`` runs, at every voxel of the mask (spec
``sdm-psi.md`` §9, steps 3-7 without permutation):

1. pre-processing: lower/upper Hedges-g bound maps (:func:`analysis.sdm.preprocess.preprocess`);
2. MetaNSUE maximum likelihood (coefficients with conservative leave-n-out, then tau2;
   :func:`analysis.sdm.metansue.censored_mle`);
3. ``imputations`` study images per study (:func:`analysis.sdm.metansue.impute`);
4. random-effects meta-analysis / meta-regression of every imputed data set, between-study
   variance by DerSimonian-Laird (SDM-PSI's default) or REML (its ``AccurateHeterogeneity``),
   variance of each imputed value from the exact Hedges-g variance; compiled for the designs
   ``[1]`` and ``[1, x]`` (:mod:`analysis.sdm.re_kernels`, shared with the permutation test),
   NumPy otherwise (:func:`analysis.sdm.random_effects.fit_random_effects`); covariates enter
   centred, so the intercept is the mean at the covariates' averages (as SDM-PSI);
5. Rubin's rules (:func:`analysis.sdm.rubin.pool_fits`) -> maps ``g, var, z, tau2, i2, h2, q``.

Permutation inference (PSI, FWE, TFCE) is done downstream (:mod:`analysis.sdm.permutation`)
from what :class:`MetaResult` keeps (bounds, MLE maps, imputed images, design).

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage
186:174-184.
Radua J et al. (2015). JAMA Psychiatry 72:1243-1251 (MetaNSUE).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from analysis.config import derive_rng, load_config
from analysis.sdm.metansue import censored_mle, impute, variance_coefficients
from analysis.sdm.random_effects import fit_random_effects, q_to_z
from analysis.sdm.re_kernels import check_heterogeneity, compiled_design, pooled_fit
from analysis.sdm.rubin import pool_fits
from analysis.sdm.space import MaskSpace

LGR = logging.getLogger(__name__)

HETEROGENEITY_NAMES = {"dl": "DerSimonian-Laird", "reml": "restricted maximum-likelihood"}

MAP_NAMES = ("g", "var", "z", "tau2", "i2", "h2", "q", "q_z", "p", "p_pos", "p_neg")


@dataclass
class MetaResult:
    """Result of :meth:`SDMPSI.fit`.

    Attributes
    ----------
    maps : dict of str -> ndarray (V,)
        ``g`` (pooled hypothesis coefficient, Hedges g for a mean), ``var`` (Rubin variance),
        ``z`` (SDM-Z = g / sqrt(var)), ``tau2``, ``i2`` (I2 in percent, like SDM's ``_h_i2``),
        ``h2``, ``q`` (pooled Q), ``q_z``, ``p`` (one-tailed p of the observed direction,
        ``1 - Phi(|z|)``), ``p_pos`` (``1 - Phi(z)``), ``p_neg`` (``Phi(z)``).
    space : MaskSpace
    df : int
        Heterogeneity degrees of freedom ``k - p``.
    bounds : Bounds or None
        The pre-processing bound maps (``lower``, ``upper``: (k, V) float32).
    mle : dict
        MetaNSUE MLE: ``beta`` (V, p), ``tau2`` (V,), ``discarded``, ``n_leave_out``, ``X``, ``C``.
    imputations : ndarray (m, k, V) float32 or None
        Imputed study images (Hedges g); their variances are ``k1 + k2 g^2``
        (:func:`analysis.sdm.metansue.variance_coefficients`).
    studies, n1, n2, X, C, params, description_, timings
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

    def get_map(self, name: str):
        """The map ``name`` as a NIfTI image on the analysis grid."""
        if name not in self.maps:
            raise KeyError(f"no map {name!r}; available: {sorted(self.maps)}")
        return self.space.to_img(self.maps[name])

    def save_maps(self, out_dir, names=None, prefix: str = "") -> list:
        """Write ``<prefix><name>.nii.gz`` for each map (atomic writes); returns the paths."""
        from analysis.io import save_nifti

        out_dir = Path(out_dir)
        paths = []
        for name in names or self.maps:
            p = out_dir / f"{prefix}{name}.nii.gz"
            save_nifti(p, self.get_map(name))
            paths.append(p)
        return paths


def analyse_imputations(imputed, n1, n2=None, X=None, C=None, heterogeneity: str = "dl",
                        max_iter: int | None = None, tol: float | None = None,
                        chunk: int = 4096, n_jobs: int = 1, progress: bool = False) -> dict:
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
        REML updates and tolerance (default config ``sdm.reml_max_iter`` / ``sdm.reml_tol``).
    chunk : int
        Voxels per block; n_jobs : int, threads over blocks.

    Returns
    -------
    dict of (V,) arrays
        ``g, var, z, tau2, i2`` (fraction), ``h2, q, q_p`` and ``df`` (int).
    """
    from tqdm import tqdm

    from analysis.sdm.random_effects import _defaults

    heterogeneity = check_heterogeneity(heterogeneity)
    d_iter, d_tol = _defaults()
    max_iter = d_iter if max_iter is None else int(max_iter)
    tol = d_tol if tol is None else float(tol)
    imputed = np.asarray(imputed)
    m, k, nv = imputed.shape
    k1, k2 = variance_coefficients(n1, n2)
    Xd = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    Cd = np.eye(Xd.shape[1])[0] if C is None else np.asarray(C, dtype=float).ravel()
    if compiled_design(Xd, Cd) is not None:
        return pooled_fit(imputed, k1, k2, Xd, Cd, heterogeneity=heterogeneity,
                          max_iter=max_iter, tol=tol, n_jobs=n_jobs)
    k1, k2 = k1[:, None], k2[:, None]
    keys = ("g", "var", "z", "tau2", "i2", "h2", "q", "q_p")
    out = {key: np.empty(nv) for key in keys}

    def block(s):
        sl = slice(s, min(s + chunk, nv))
        y = imputed[:, :, sl].astype(float)
        v = k1 + k2 * y * y
        fits = fit_random_effects(y, v, Xd, Cd, max_iter=max_iter, tol=tol,
                                  method=heterogeneity)
        pooled = pool_fits(fits, Cd)
        for key in keys:
            out[key][sl] = pooled[key]

    starts = list(range(0, nv, chunk))
    if n_jobs == 1:
        for s in tqdm(starts, desc="meta-analysis of imputations", disable=not progress,
                      leave=False):
            block(s)
    else:
        from joblib import Parallel, delayed

        Parallel(n_jobs=n_jobs, prefer="threads")(delayed(block)(s) for s in starts)
    out["df"] = k - Xd.shape[1]
    return out


def design_matrix(studies: pd.DataFrame, covariates=None, centre: bool = True
                  ) -> tuple[np.ndarray, list]:
    """Design ``[1, covariates]`` from study-table columns (numeric; text: dummy coding).

    Covariate columns are centred on their means (``centre``, default): the intercept is then
    the effect at the covariates' averages, SDM-PSI's covariate-adjusted mean (its ``extract``
    output reports the intercept at the covariate mean, Li et al. 2023). Slopes do not change.

    Raises
    ------
    analysis.errors.DataError
        A covariate column is missing or has missing values.
    """
    from analysis.errors import DataError

    cols = [np.ones(len(studies))]
    names = ["intercept"]
    for cov in covariates or []:
        if cov not in studies.columns:
            raise DataError("study table", f"covariate {cov!r} is not a column", field=cov)
        col = studies[cov]
        if col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0]) + 1
            raise DataError("study table", f"covariate {cov!r} has missing values", row=row,
                            field=cov)
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().all():
            cols.append(num.to_numpy(dtype=float))
            names.append(cov)
        else:
            levels = sorted(col.astype(str).unique())
            for lev in levels[1:]:
                cols.append((col.astype(str) == lev).to_numpy(dtype=float))
                names.append(f"{cov}[{lev}]")
    X = np.column_stack(cols)
    if centre and X.shape[1] > 1:
        X[:, 1:] -= X[:, 1:].mean(axis=0)
    return X, names


def parse_hypothesis(hypothesis, p: int) -> np.ndarray:
    """Hypothesis row from None (intercept), a sequence, or SDM's ``"0+1+0"`` string."""
    if hypothesis is None:
        C = np.zeros(p)
        C[0] = 1.0
        return C
    if isinstance(hypothesis, str):
        hypothesis = [float(x) for x in hypothesis.replace(",", "+").split("+") if x.strip()]
    C = np.asarray(hypothesis, dtype=float).ravel()
    if C.size != p:
        raise ValueError(f"hypothesis has {C.size} entries but the design has {p} columns")
    return C


class SDMPSI:
    """SDM-PSI mean analysis / meta-regression (without permutations).

    Parameters
    ----------
    fwhm, anisotropy, unknown_peak_mode : optional
        Pre-processing (defaults: config ``sdm.fwhm_mm``, ``sdm.anisotropy``,
        ``sdm.unknown_peak_mode``).
    imputations : int, optional
        Number of imputed study images (default config ``sdm.imputations`` = 50).
    covariates : list of str, optional
        Study-table columns added to the design (intercept always included), centred on their
        means so that the intercept is the mean at the covariates' averages (as SDM-PSI).
    hypothesis : optional
        Hypothesis row over ``[intercept, covariates...]`` (default: the intercept).
    leave_n_out : optional
        Conservative leave-n-out of the MLE (default config ``sdm.leave_n_out``).
    heterogeneity : {"dl", "reml"}, optional
        Between-study variance of each imputation's model: DerSimonian-Laird (SDM-PSI's default,
        ``AccurateHeterogeneity=false``) or REML (``AccurateHeterogeneity=true``). Default:
        config ``sdm.heterogeneity``.
    seed : int, optional
        Seed (default config ``seed``); the imputation stream is ``derive_rng(seed, "sdm/impute")``.
    n_jobs : int
        Threads for the meta-analysis of the imputations.
    keep_imputations : bool
        Keep the (m, k, V) imputed images on the result (needed for permutations).
    preprocess_kwargs : dict, optional
        Extra arguments of :func:`analysis.sdm.preprocess.preprocess`.
    """

    def __init__(self, fwhm=None, anisotropy=None, imputations=None, unknown_peak_mode=None,
                 covariates=None, hypothesis=None, leave_n_out=None, heterogeneity=None,
                 seed=None, n_jobs: int = 1,
                 keep_imputations: bool = True, progress: bool = False,
                 preprocess_kwargs: dict | None = None):
        cfg = load_config()
        sdm = cfg["sdm"]
        self.fwhm = float(sdm["fwhm_mm"] if fwhm is None else fwhm)
        self.anisotropy = float(sdm["anisotropy"] if anisotropy is None else anisotropy)
        self.imputations = int(sdm["imputations"] if imputations is None else imputations)
        self.unknown_peak_mode = unknown_peak_mode or sdm["unknown_peak_mode"]
        self.covariates = list(covariates or [])
        self.hypothesis = hypothesis
        self.leave_n_out = sdm["leave_n_out"] if leave_n_out is None else leave_n_out
        self.heterogeneity = check_heterogeneity(
            sdm.get("heterogeneity", "dl") if heterogeneity is None else heterogeneity)
        self.seed = int(cfg["seed"] if seed is None else seed)
        self.n_jobs = int(n_jobs)
        self.keep_imputations = keep_imputations
        self.progress = progress
        self.preprocess_kwargs = dict(preprocess_kwargs or {})
        if self.imputations < 2:
            raise ValueError("at least 2 imputations are needed for Rubin's rules")

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("fwhm", "anisotropy", "imputations",
                                              "unknown_peak_mode", "covariates", "hypothesis",
                                              "leave_n_out", "heterogeneity", "seed")}

    def fit(self, dataset, mask_img=None) -> MetaResult:
        """Pre-process ``dataset`` (an :class:`~analysis.sdm.dataset.SDMDataset`) and fit."""
        from analysis.grid import gm_mask
        from analysis.sdm.preprocess import preprocess

        space = MaskSpace(gm_mask() if mask_img is None else mask_img)
        t0 = time.perf_counter()
        bounds = preprocess(dataset, space, fwhm=self.fwhm, anisotropy=self.anisotropy,
                            unknown_peak_mode=self.unknown_peak_mode, progress=self.progress,
                            **self.preprocess_kwargs)
        t_pp = time.perf_counter() - t0
        studies = dataset.studies.set_index("study").loc[list(bounds.studies)].reset_index()
        X, names = design_matrix(studies, self.covariates)
        res = self.fit_bounds(bounds.lower, bounds.upper, bounds.n1, bounds.n2, space, X=X,
                              studies=list(bounds.studies))
        res.bounds = bounds
        res.timings = {"preprocess_s": round(t_pp, 3), **res.timings}
        res.params["design_columns"] = names
        return res

    def fit_bounds(self, lower, upper, n1, n2, space: MaskSpace, X=None, studies=None
                   ) -> MetaResult:
        """Fit from ready-made bound maps (k, V), e.g. SDM-PSI's own ``pp/`` maps."""
        lower = np.asarray(lower, dtype=np.float32)
        upper = np.asarray(upper, dtype=np.float32)
        k, nv = lower.shape
        if nv != space.n_voxels:
            raise ValueError(f"bounds have {nv} voxels but the mask has {space.n_voxels}")
        n1 = np.asarray(n1, dtype=float)
        n2 = np.full(k, np.nan) if n2 is None else np.asarray(n2, dtype=float)
        X = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
        C = parse_hypothesis(self.hypothesis, X.shape[1])
        timings = {}
        t = time.perf_counter()
        mle = censored_mle(lower, upper, n1, n2, X, C, leave_n_out=self.leave_n_out,
                           progress=self.progress)
        timings["mle_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        rng = derive_rng(self.seed, "sdm/impute")
        imps = impute(lower, upper, mle, n1, n2, space, imputations=self.imputations, rng=rng,
                      fwhm_mm=self.fwhm, progress=self.progress)
        timings["impute_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        pooled = analyse_imputations(imps, n1, n2, X, C, heterogeneity=self.heterogeneity,
                                     n_jobs=self.n_jobs, progress=self.progress)
        timings["meta_s"] = round(time.perf_counter() - t, 3)
        maps = maps_from_pooled(pooled)
        params = self.get_params()
        return MetaResult(
            maps=maps, space=space, df=int(pooled["df"]),
            studies=list(studies) if studies is not None else [f"study{i}" for i in range(k)],
            n1=n1, n2=n2, X=X, C=C, mle=mle, imputations=imps if self.keep_imputations else None,
            params=params, description_=describe(params, k, space.n_voxels), timings=timings)


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
