"""Per-study values at one voxel (SDM-PSI's *extract*) and the reader of SDM-PSI's extract file.

SDM-PSI's extract tool writes, for one voxel, the pooled statistics of the model and every
study's imputed effect and its variance in every imputation (Albajes-Eizagirre et al. 2019);
SDM users draw forest plots from it and check which studies drive a cluster. This module gives
the same at a voxel of a fitted :class:`~analysis.sdm.estimator.MetaResult`:

- every study's imputed Hedges g (mean and standard deviation over the ``m`` imputations), its
  variance ``v = k1 + k2 g^2`` (:func:`analysis.sdm.statistics.hedges.variance_coefficients`,
  mean over imputations), a Rubin-pooled 95 % interval (:func:`analysis.sdm.statistics.pooling.rubin_pool`),
  its random-effects weight (``1 / (v + tau2)`` of each imputation, in percent of the sum, mean
  over imputations) and whether it is *exact* (lower bound = upper bound at the voxel,
  :data:`analysis.sdm.statistics.metansue.settings.KNOWN_TOL`) or *censored* (imputed);
- the pooled model of the imputations, computed by the statistics core
  (:func:`analysis.sdm.statistics.random_effects.fit_random_effects` per imputation, then
  :func:`analysis.sdm.statistics.rubin.pool_fits`): the hypothesis coefficient ``g``, its Rubin
  variance, ``z``, one-tailed p, tau2, I2 (percent), H2, Q (D2-pooled) and Q's z.

:meth:`VoxelExtract.to_sdm_text` writes SDM-PSI's extract layout and :func:`read_sdm_extract`
reads it back. The layout is that of the one public SDM-PSI extract file known to us (Li et al.
2023, ``extract_34_4_52.txt``): a tab-separated table with columns ``map, estimate, variance,
sdm_z``; header rows for the intercept (``β0``, HTML-coded as SDM writes it), ``Hedges' g``
(estimate, variance, SDM-Z), ``uncorrp`` and ``uncorrp_neg``, the heterogeneity of the model
``<model>_τ2``, ``_H2``, ``_I2`` (percent), ``_Q2`` (with Q's z in the ``sdm_z`` column), the
corrected ``corrp_*`` rows, then one row ``<study>_I<5-digit imputation>`` per study and
imputation (effect and variance). Conventions read off that file, not documented elsewhere:
``uncorrp`` is ``1 - p`` of the positive tail (``Phi(z)``; FSL's ``1 - p`` convention of
SDM-PSI's p maps), ``uncorrp_neg`` is ``1 - p`` of the negative tail, and the ``corrp_*_neg``
rows are written as ``-(1 - p_FWE)`` (the file prints -0.077 at a voxel of negative z).

References
----------
Albajes-Eizagirre A, Solanes A, Vieta E, Radua J (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186:174-184.
Li Q, Petersen SE, Wang X, Radua J, Yang G, Liu X (2023). Lifespan trajectory of cognitive
control: an SDM-PSI meta-analysis (public SDM-PSI outputs: github.com/guochun-yang/
Cognitive_Control_Developmental_Trajectory, ``meta_data/analysis_Adult-ChildOld``).
Rubin DB (1987). Multiple Imputation for Nonresponse in Surveys. Wiley.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from analysis.sdm.statistics.hedges import variance_coefficients
from analysis.sdm.statistics.hypothesis import hypothesis_row
from analysis.sdm.statistics.metansue.settings import KNOWN_TOL
from analysis.sdm.statistics.pooling import rubin_pool
from analysis.sdm.statistics.random_effects import fit_random_effects, q_to_z
from analysis.sdm.statistics.rubin import pool_fits

#: columns of :attr:`VoxelExtract.studies`
STUDY_COLUMNS = ["study", "g", "g_sd", "variance", "ci_low", "ci_high", "weight_percent",
                 "status", "lower", "upper", "n1", "n2"]
#: columns of :meth:`VoxelExtract.to_frame` (study rows, then one ``pooled`` row)
FRAME_COLUMNS = ["row", "study", "g", "g_sd", "variance", "ci_low", "ci_high",
                 "weight_percent", "status", "lower", "upper", "n1", "n2", "z", "p", "tau2",
                 "i2_percent", "h2", "q", "q_z", "df", "k", "imputations", "x", "y", "z_mm"]
#: status of a study at the voxel
EXACT, CENSORED = "exact", "censored"
#: z of a two-sided 95 % interval
Z95 = float(norm.isf(0.025))
#: SDM-PSI's names of the header rows (the model's prefix and ``_`` precede the last four)
SDM_LABELS = {"beta0": "<i>&beta;</i><sub>0</sub>", "g": "Hedges' <i>g</i>",
              "uncorrp": "uncorrp", "uncorrp_neg": "uncorrp_neg",
              "tau2": "<i>&tau;</i><sup>2</sup>", "h2": "<i>H</i><sup>2</sup>",
              "i2": "<i>I</i><sup>2</sup>", "q": "<i>Q</i><sup>2</sup>"}
#: the corrected rows, in SDM-PSI's order
CORRP_ROWS = ("corrp_voxel", "corrp_voxel_neg", "corrp_tfce", "corrp_tfce_neg")
_MODEL_KEYS = ("tau2", "h2", "i2", "q")
_STUDY_ROW = re.compile(r"^(?P<study>.+)_I(?P<imp>\d{5})$")


def pool_voxel(y, v, X=None, C=None, heterogeneity: str = "dl") -> dict:
    """Random-effects model of each imputation at one voxel, pooled with Rubin's rules.

    Parameters
    ----------
    y, v : array-like, shape (m, k)
        Imputed study effects and their variances.
    X : array-like, shape (k, p), optional
        Design (default: the intercept); covariates centred, as the estimator's.
    C : array-like, shape (p,), optional
        Hypothesis row (default: the first coefficient).
    heterogeneity : {"dl", "reml"}
        Between-study variance of each imputation (SDM-PSI's default DerSimonian-Laird).

    Returns
    -------
    dict
        Scalars ``beta0`` (intercept, mean over imputations), ``g``, ``var``, ``z``, ``p``
        (one-tailed, observed direction), ``p_pos``, ``p_neg``, ``tau2``, ``i2`` (percent),
        ``h2``, ``q``, ``q_z``, ``df``, ``k``, ``m``; and ``weight_percent`` (k,), each
        study's random-effects weight in percent, mean over imputations.
    """
    y = np.atleast_2d(np.asarray(y, dtype=float))
    v = np.atleast_2d(np.asarray(v, dtype=float))
    if y.shape != v.shape:
        raise ValueError(f"effects {y.shape} and variances {v.shape} differ in shape")
    m, k = y.shape
    Xd = np.ones((k, 1)) if X is None else np.asarray(X, dtype=float).reshape(k, -1)
    Cd = hypothesis_row(C, Xd.shape[1])
    fits = fit_random_effects(y[:, :, None], v[:, :, None], Xd, Cd, method=heterogeneity)
    pooled = pool_fits(fits, Cd)
    w = 1.0 / (v + fits["tau2"][:, :1])                     # (m, k): tau2 of each imputation
    out = {key: float(np.asarray(pooled[key]).ravel()[0])
           for key in ("g", "var", "z", "tau2", "h2", "q")}
    z = out["z"]
    out.update({"beta0": float(fits["beta"][:, 0, 0].mean()), "i2": 100.0 * float(pooled["i2"][0]),
                "p": float(norm.sf(abs(z))), "p_pos": float(norm.sf(z)),
                "p_neg": float(norm.cdf(z)), "df": int(pooled["df"]), "k": k, "m": m,
                "q_z": float(q_to_z(out["q"], int(pooled["df"]))),
                "weight_percent": 100.0 * (w / w.sum(axis=1, keepdims=True)).mean(axis=0)})
    return out


@dataclass
class VoxelExtract:
    """What :func:`extract` returns: the studies and the pooled model at one voxel.

    Attributes
    ----------
    xyz : tuple of int or float
        MNI coordinate (mm) of the voxel centre used.
    voxel : int
        Its index in the mask's voxel vector (-1 when not from a result).
    studies : pandas.DataFrame
        One row per study (:data:`STUDY_COLUMNS`).
    pooled : dict
        Output of :func:`pool_voxel` (without ``weight_percent``).
    imputations, variances : ndarray, shape (m, k)
        Every study's imputed effect and its variance in every imputation.
    corrected : dict
        ``corrp_*`` values (``1 - p_FWE``) at the voxel, when the result was corrected.
    """

    xyz: tuple
    voxel: int
    studies: pd.DataFrame
    pooled: dict
    imputations: np.ndarray
    variances: np.ndarray
    corrected: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per study, then one ``pooled`` row (:data:`FRAME_COLUMNS`)."""
        rows = self.studies.assign(row="study")
        p = self.pooled
        half = Z95 * np.sqrt(p["var"])
        pooled = {"row": "pooled", "study": "pooled", "g": p["g"], "variance": p["var"],
                  "ci_low": p["g"] - half, "ci_high": p["g"] + half, "weight_percent": 100.0,
                  "z": p["z"], "p": p["p"], "tau2": p["tau2"], "i2_percent": p["i2"],
                  "h2": p["h2"], "q": p["q"], "q_z": p["q_z"], "df": p["df"], "k": p["k"],
                  "imputations": p["m"]}
        out = pd.concat([rows, pd.DataFrame([pooled])], ignore_index=True)
        out["x"], out["y"], out["z_mm"] = self.xyz
        return out.reindex(columns=FRAME_COLUMNS)

    def to_sdm_text(self, model_name: str = "MyLinearModel") -> str:
        """SDM-PSI's extract layout (see the module docstring), six decimals as SDM-PSI.

        Parameters
        ----------
        model_name : str
            The prefix of the heterogeneity rows: the name of the analysis in SDM-PSI
            (``MyLinearModel`` in the one public file).
        """
        p = self.pooled

        def num(x):
            return "NA" if x is None or not np.isfinite(x) else f"{x:.6f}"

        rows = [("map", "estimate", "variance", "sdm_z"),
                (SDM_LABELS["beta0"], num(p["beta0"]), "NA", "NA"),
                (SDM_LABELS["g"], num(p["g"]), num(p["var"]), num(p["z"])),
                ("uncorrp", num(1.0 - p["p_pos"]), "NA", "NA"),
                ("uncorrp_neg", num(1.0 - p["p_neg"]), "NA", "NA")]
        for key in _MODEL_KEYS:
            value = p[key]
            rows.append((f"{model_name}_{SDM_LABELS[key]}", num(value), "NA",
                         num(p["q_z"]) if key == "q" else "NA"))
        for name in CORRP_ROWS:
            if name in self.corrected:
                value = float(self.corrected[name])
                rows.append((name, num(0.0 - value if name.endswith("_neg") else value), "NA",
                             "NA"))
        for i, study in enumerate(self.studies["study"]):
            for j in range(self.imputations.shape[0]):
                rows.append((f"{study}_I{j:05d}", num(self.imputations[j, i]),
                             num(self.variances[j, i]), "NA"))
        return "".join("\t".join(r) + "\n" for r in rows)


def extract_voxel(imputed, n1, n2=None, *, studies=None, X=None, C=None, lower=None,
                  upper=None, heterogeneity: str = "dl", xyz=(np.nan, np.nan, np.nan),
                  voxel: int = -1, corrected=None) -> VoxelExtract:
    """Extract at one voxel from the imputed study effects there.

    Parameters
    ----------
    imputed : array-like, shape (m, k)
        Imputed Hedges g of the k studies at the voxel.
    n1, n2 : array-like, shape (k,)
        Sample sizes (``n2`` NaN or None for one-sample studies): the variance of each
        imputed value is ``k1 + k2 g^2``.
    studies : list of str, optional
        Study ids (default ``study1..k``).
    X, C : optional
        Design and hypothesis row (:func:`pool_voxel`).
    lower, upper : array-like, shape (k,), optional
        The studies' bounds at the voxel; a study is exact where they agree within
        :data:`~analysis.sdm.statistics.metansue.settings.KNOWN_TOL`. Without them, where its
        imputations agree within that tolerance.
    heterogeneity : {"dl", "reml"}
    xyz : tuple
        MNI coordinate of the voxel (reported). voxel : int, its index (reported).
    corrected : dict, optional
        ``corrp_*`` values at the voxel.

    Returns
    -------
    VoxelExtract
    """
    y = np.atleast_2d(np.asarray(imputed, dtype=float))
    m, k = y.shape
    n1 = np.asarray(n1, dtype=float)
    n2 = np.full(k, np.nan) if n2 is None else np.asarray(n2, dtype=float)
    if n1.shape != (k,) or n2.shape != (k,):
        raise ValueError(f"{k} studies in the imputations but sample sizes of shape "
                         f"{n1.shape}, {n2.shape}")
    k1, k2 = variance_coefficients(n1, n2)
    v = k1[None, :] + k2[None, :] * y * y
    pooled = pool_voxel(y, v, X, C, heterogeneity)
    if lower is not None and upper is not None:
        lo = np.asarray(lower, dtype=float).reshape(k)
        up = np.asarray(upper, dtype=float).reshape(k)
        exact = np.abs(up - lo) < KNOWN_TOL
    else:
        lo = up = np.full(k, np.nan)
        exact = np.ptp(y, axis=0) < KNOWN_TOL
    g_mean, total = rubin_pool(y, v)
    half = Z95 * np.sqrt(total)
    table = pd.DataFrame({
        "study": list(studies) if studies is not None else [f"study{i + 1}" for i in range(k)],
        "g": g_mean, "g_sd": y.std(axis=0, ddof=1) if m > 1 else np.zeros(k),
        "variance": v.mean(axis=0), "ci_low": g_mean - half, "ci_high": g_mean + half,
        "weight_percent": pooled.pop("weight_percent"),
        "status": np.where(exact, EXACT, CENSORED), "lower": lo, "upper": up,
        "n1": n1, "n2": n2}, columns=STUDY_COLUMNS)
    return VoxelExtract(xyz=tuple(xyz), voxel=int(voxel), studies=table, pooled=pooled,
                        imputations=y, variances=v, corrected=dict(corrected or {}))


def voxel_of(space, xyz) -> int:
    """Index of the mask voxel nearest an MNI coordinate (mm).

    Raises
    ------
    ValueError
        The nearest voxel of the grid is not in the mask (the message gives the nearest
        coordinate that is).
    """
    xyz = np.asarray(xyz, dtype=float).reshape(3)
    idx = int(space.voxel_index(xyz[None, :])[0])
    if idx < 0:
        inside = space.xyz
        j = int(np.argmin(np.linalg.norm(inside - xyz, axis=1)))
        near = ", ".join(f"{c:g}" for c in inside[j])
        dist = float(np.linalg.norm(inside[j] - xyz))
        raise ValueError(f"MNI ({', '.join(f'{c:g}' for c in xyz)}) is outside the analysis "
                         f"mask; the nearest voxel in the mask is ({near}), {dist:.1f} mm away")
    return idx


def extract(result, xyz, refit: bool = True) -> VoxelExtract:
    """SDM-PSI's extract at the mask voxel nearest ``xyz`` of a fitted result.

    The per-imputation study effects are those the result kept (``MetaResult.imputations``,
    kept by default: ``SDMPSI(keep_imputations=True)``). When the fit did not keep them and the
    result has its bound maps (:meth:`~analysis.sdm.estimator.SDMPSI.fit_preprocessed`),
    they are re-created exactly by re-running the fit with the result's parameters and seed
    (``refit``; the MLE and imputations are deterministic given the seed).

    Parameters
    ----------
    result : MetaResult
    xyz : array-like (3,)
        MNI coordinate in mm.
    refit : bool
        Allow the re-fit when the imputations were not kept.

    Returns
    -------
    VoxelExtract
    """
    voxel = voxel_of(result.space, xyz)
    imputed = result.imputations
    if imputed is None:
        bounds = getattr(result, "bounds", None)
        if not refit or bounds is None or result.estimator is None:
            raise ValueError("the result kept no imputations (SDMPSI(keep_imputations=False)) "
                             "and has no bound maps to re-create them from")
        est = result.estimator._parameter_copy().set_params(keep_imputations=True,
                                                            progress=False)
        again = est.fit_bounds(bounds.lower, bounds.upper, result.n1, result.n2, result.space,
                               X=result.X, studies=result.studies)
        imputed = again.imputations
    bounds = getattr(result, "bounds", None)
    lower = upper = None
    if bounds is not None:
        lower, upper = bounds.lower[:, voxel], bounds.upper[:, voxel]
    corrected = {n: float(result.maps[n][voxel]) for n in CORRP_ROWS if n in result.maps}
    return extract_voxel(np.asarray(imputed)[:, :, voxel], result.n1, result.n2,
                         studies=result.studies, X=result.X, C=result.C, lower=lower,
                         upper=upper, heterogeneity=result.params.get("heterogeneity", "dl"),
                         xyz=tuple(float(c) for c in result.space.xyz[voxel]), voxel=voxel,
                         corrected=corrected)


# --------------------------------------------------------------------------------------------
# SDM-PSI's extract file


@dataclass
class SDMExtractFile:
    """An SDM-PSI extract file as read by :func:`read_sdm_extract`.

    Attributes
    ----------
    header : dict
        ``beta0``, ``g``, ``var``, ``z``, ``uncorrp``, ``uncorrp_neg``, ``tau2``, ``h2``,
        ``i2`` (percent), ``q``, ``q_z`` and the ``corrp_*`` rows present (NaN for ``NA``).
    model_name : str
        Prefix of the heterogeneity rows.
    studies : list of str
        Study ids in file order.
    y, v : ndarray, shape (m, k)
        Imputed effects and their variances.
    """

    header: dict
    model_name: str
    studies: list
    y: np.ndarray
    v: np.ndarray


def _number(text: str, path, row: int, column: str) -> float:
    if text == "NA":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}, row {row}, field '{column}': expected a number or NA, "
                         f"got {text!r}") from None


def read_sdm_extract(path) -> SDMExtractFile:
    """Read an SDM-PSI extract file (:meth:`VoxelExtract.to_sdm_text` writes the same layout).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    SDMExtractFile

    Raises
    ------
    analysis.sdm.errors.DataError
        A missing header row, a malformed line or a study without every imputation (file,
        row and field named).
    """
    from analysis.sdm.errors import DataError

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["map", "estimate", "variance", "sdm_z"]:
        raise DataError(path, "not an SDM-PSI extract file: expected the header "
                        "'map, estimate, variance, sdm_z'", row=0)
    header: dict[str, float] = {}
    model_name = ""
    cells: dict[str, dict[int, tuple[float, float]]] = {}
    model_suffixes = {f"_{SDM_LABELS[k]}": k for k in _MODEL_KEYS}
    for i, line in enumerate(lines[1:], start=1):
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(path, f"expected 4 tab-separated fields, got {len(parts)}", row=i)
        name, est, var, z = parts
        est_v = _number(est, path, i, "estimate")
        match = _STUDY_ROW.match(name)
        if match:
            cells.setdefault(match["study"], {})[int(match["imp"])] = (
                est_v, _number(var, path, i, "variance"))
            continue
        if name == SDM_LABELS["beta0"]:
            header["beta0"] = est_v
        elif name == SDM_LABELS["g"]:
            header.update(g=est_v, var=_number(var, path, i, "variance"),
                          z=_number(z, path, i, "sdm_z"))
        elif name in ("uncorrp", "uncorrp_neg") or name in CORRP_ROWS:
            header[name] = est_v
        else:
            suffix = next((s for s in model_suffixes if name.endswith(s)), None)
            if suffix is None:
                raise DataError(path, f"unknown row {name!r}", row=i, field="map")
            model_name = name[:-len(suffix)]
            header[model_suffixes[suffix]] = est_v
            if model_suffixes[suffix] == "q":
                header["q_z"] = _number(z, path, i, "sdm_z")
    missing = [k for k in ("g", "var", "z", "tau2", "i2", "q") if k not in header]
    if missing:
        raise DataError(path, f"header rows missing: {missing}", field="map")
    if not cells:
        raise DataError(path, "no study rows '<study>_I<imputation>'", field="map")
    studies = list(cells)
    m = max(len(c) for c in cells.values())
    for s in studies:
        if sorted(cells[s]) != list(range(m)):
            raise DataError(path, f"study {s!r} has {len(cells[s])} of {m} imputations",
                            field="map")
    y = np.array([[cells[s][j][0] for s in studies] for j in range(m)])
    v = np.array([[cells[s][j][1] for s in studies] for j in range(m)])
    return SDMExtractFile(header=header, model_name=model_name, studies=studies, y=y, v=v)
