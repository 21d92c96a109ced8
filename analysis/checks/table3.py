"""Internal consistency of the published Table 3 of He et al. (2024).

Without the authors' coordinates a reader can still check whether the numbers printed in Table 3
(the four meta-analytic clusters: extent, peak, SDM-Z, voxel p, Hedges' g, I², Egger's p) agree
with each other, with the samples of Table 1 and with what the Methods and Results say. This is
the idea of statcheck (Nuijten et al., 2016) — recompute a p value from the printed test
statistic, allowing for the rounding of both — extended to what SDM-PSI's model implies
(Albajes-Eizagirre et al., 2019). :func:`table3_consistency` returns one row per check per
cluster with a verdict from :data:`VERDICTS` and a one-line reason. A verdict is never stronger
than the arithmetic: where the printed numbers cannot decide, the verdict is ``not checkable``.

Checks (per cluster; ``z`` = SDM-Z, ``g`` = Hedges' g, ``h`` = half a unit of the last printed
digit)

``p_voxel``
    The one-tailed ``p = 1 - Phi(|z|)`` (SDM-PSI's ``uncorrp`` map is ``Phi(z)``, as its maps of
    Enge et al. 2021 show) over ``|z| +/- h`` must contain the printed p, widened by its own half
    unit and by half a float32 step of ``1 - p``: SDM-PSI writes ``1 - p`` as a float32 map, whose
    values just below 1 are multiples of ``2**-24``. The four printed p values of the paper are
    such multiples (``p / 2**-24`` = 3762.005, 1812.996, 1228.998, 181.999, each within the 0.008
    the 9 printed decimals allow; by chance all four would be this close with probability about
    1e-7, see :func:`float32_steps`). Without that allowance the Middle Occipital Gyrus row is a
    statcheck "inconsistency" (not a decision error): even the largest ``|z|`` the print allows
    gives ``Phi(-4.2465) = 1.0857e-05 > 1.0848e-05``; with it, it is consistent
    (``1 - float32(1 - 1.0857e-05) = 182 * 2**-24 = 1.0848e-05``).
``significance``
    Footnote b and the Results (l. 226-231): every cluster has voxel ``p < 0.0025``; the printed p
    and ``|z|`` (``>= Phi^-1(1 - 0.0025) = 2.807``) must both say so.
``sign``
    ``Patients>Controls`` needs ``z > 0`` and ``g > 0``; ``Patients<Controls`` both negative.
``peak_coordinates``
    SDM-PSI reports voxel centres of its 2 mm grid (origin −90, −126, −72 mm): even millimetres.
``hedges_g``
    The pooled g is a weighted mean whose variance is at least the fixed-effect variance
    ``V_FE = 1 / sum_i 1/v_i`` with ``v_i = 1/n1_i + 1/n2_i`` (the exact variance of Hedges' g at
    ``g = 0``, its smallest value; Hedges & Olkin, 1985) over all 11 studies (296 patients, 229
    controls): SDM-PSI pools every study at every voxel, imputing the effects of studies without
    a peak nearby (MetaNSUE; Albajes-Eizagirre et al., 2019), so 11 studies is the most
    information a voxel can have. A random-effects variance (tau² >= 0) and Rubin's
    between-imputation variance only add to it, and so does the age covariate of the paper's
    model (the mean at the covariate average is an unbiased linear estimate of the common mean,
    whose variance the weighted mean minimises). Hence ``|g| >= Phi^-1(1 - 0.0025) sqrt(V_FE)``
    for any significant voxel (0.250 here). There is no upper bound: the studies' effects at a
    voxel are not printed.
``standard_error``
    ``SE = g / z`` (SDM-Z is ``g / sqrt(var)``, Albajes-Eizagirre et al., 2019) must be at
    least ``sqrt(V_FE)`` (0.0891 here), i.e. ``|z| <= |g| / sqrt(V_FE)``.
``standard_error_complete_data``
    Not checkable, reported for the reader: the random-effects SE without imputation, with
    the tau² the printed I² implies (``tau² = s² I²/(1 - I²)``, ``s²`` the typical within-study
    variance of Higgins & Thompson, 2002, which is also SDM-PSI's I² definition, as its voxel
    output for Li et al., 2023, shows). The implied SE is larger; how much larger SDM-PSI's
    multiple imputation (Rubin, 1987) makes it depends on the unreported effects, so no upper
    bound follows.
``i2``
    Printed in percent (SDM-PSI stores I² in %, e.g. in its maps of Enge et al., 2021; as a
    fraction the Cerebellum's 2.35 would exceed 1); must lie in [0, 100) and, per the Results
    (l. 231), below 25 %.
``egger_p``
    A probability, and per the Results (l. 232-234) above 0.05 for every cluster.
``cluster_voxels``
    The Methods' extent threshold ``k > 10`` (l. 177; Figure 2's caption): at least 11 voxels.
``cluster_extent_single_peak``
    The largest cluster one recreated peak can produce when it alone makes the cluster. Model
    (an assumption, stated here because it decides the verdict): near such a peak the study's
    recreated effect is ``g_p K(d)`` — the midpoint of SDM's bounds ``lower = -g_thr + K (g_p +
    g_thr)``, ``upper = g_thr + K (g_p - g_thr)`` is exactly ``K g_p`` — the other
    studies add nothing that varies over the blob, and the pooled variance is smallest at the
    peak, where the study's effect is known (lower = upper); so ``z(d) <= z_peak K(d)`` and the
    cluster is contained in ``{K >= z_thr / |z_peak|}``, with ``z_thr = Phi^-1(1 - 0.0025)``.
    Default ``K``: SDM-PSI's isotropic Gaussian, FWHM 20 mm (``sigma = 8.49`` mm), counted on the
    2 mm grid without a mask: the grid points within ``sigma sqrt(2 ln(|z_peak| / z_thr))`` of the
    peak. SDM-PSI's anisotropic kernel is wider than this Gaussian in grey matter (as its bound
    maps of Enge et al., 2021, show), so the isotropic count is not an upper bound for it; pass
    ``kernel`` (e.g. the engine's :func:`analysis.sdm.maps.kernel.make_kernel` on the analysis mask)
    to count the connected voxels of that kernel inside its mask instead. A printed extent within
    the bound is ``consistent`` (one study's peak suffices; the extent says nothing about
    convergence across studies). A larger one is ``not checkable``: several peaks (of one or more
    studies) must contribute, and the table does not say which. A cluster whose printed peak is
    below the threshold cannot have any voxel above it: ``inconsistent``. A lower bound does not
    exist (the mask and nearby effects of the opposite sign can cut a blob down to the ``k > 10``
    minimum).

References
----------
Albajes-Eizagirre, A., Solanes, A., Vieta, E., Radua, J. (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186, 174-184.
He, J. et al. (2024). Neural basis of pain empathy dysregulations in mental disorders: a
pre-registered neuroimaging meta-analysis. Table 3; Methods l. 172-177; Results l. 225-234.
Hedges, L. V. & Olkin, I. (1985). Statistical methods for meta-analysis. Academic Press.
Higgins, J. P. T. & Thompson, S. G. (2002). Quantifying heterogeneity in a meta-analysis.
Stat Med 21, 1539-1558.
Nuijten, M. B., Hartgerink, C. H. J., van Assen, M. A. L. M., Epskamp, S., Wicherts, J. M.
(2016). The prevalence of statistical reporting errors in psychology (1985-2013). Behav Res
Methods 48, 1205-1226.
Rubin, D. B. (1987). Multiple imputation for nonresponse in surveys. Wiley.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from analysis.sdm.errors import DataError
from analysis.sdm.maps.space import ijk_to_mni, mni_to_ijk

LGR = logging.getLogger(__name__)

TABLE3_FILE = "published_table3.tsv"
STUDIES_FILE = "studies.tsv"
TABLE3_COLUMNS = ["direction", "region", "aal_label", "cluster_voxels", "x", "y", "z", "sdm_z",
                  "p_voxel", "hedges_g", "i2", "egger_p"]
#: ``direction`` of Table 3 -> sign of the effect (patients minus controls).
DIRECTIONS = {"Patients>Controls": 1, "Patients<Controls": -1}
#: The only verdicts :func:`table3_consistency` gives.
VERDICTS = ("consistent", "inconsistent", "not checkable")
#: Columns of the result of :func:`table3_consistency`.
CHECK_COLUMNS = ["cluster", "direction", "region", "quantity", "printed", "recomputed", "lower",
                 "upper", "verdict", "reason"]
#: Results l. 231: "Heterogeneity test results were all below 25%".
I2_LIMIT_PCT = 25.0
#: Methods l. 190-192 and Results l. 232-234: Egger's p > 0.05 for every cluster.
EGGER_ALPHA = 0.05
#: Printed decimals assumed where a value is given as a number rather than as printed text.
DEFAULT_DECIMALS = {"sdm_z": 3, "p_voxel": 9, "hedges_g": 6, "i2": 6, "egger_p": 3}
#: Spacing of float32 numbers in [0.5, 1): the step of ``1 - p`` in SDM-PSI's float32 map.
FLOAT32_STEP = 2.0 ** -24


# ---------------------------------------------------------------------------------------------
# inputs


def load_published_table3(data_dir: str | Path | None = None) -> pd.DataFrame:
    """Read ``published_table3.tsv`` as printed text, checking every number and direction.

    Parameters
    ----------
    data_dir : path-like, optional
        Folder holding the file (default :func:`analysis.paths.data_dir`).

    Returns
    -------
    pandas.DataFrame
        Text cells as in the file (so the printed number of decimals is kept), index = data
        row (1-based).

    Raises
    ------
    DataError
        Missing file or column, an unknown ``direction``, or a cell that is not a number (the
        message names the file, the row and the field).
    """
    from analysis import paths
    from analysis.sdm.inputs.io import read_tsv_text

    path = Path(data_dir or paths.data_dir()) / TABLE3_FILE
    raw = read_tsv_text(path, required=TABLE3_COLUMNS)
    _numbers(raw, path.name)
    return raw


def _numbers(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Numeric copy of Table 3 (blank cells NaN); DataError for a bad direction or number."""
    out = pd.DataFrame(index=table.index)
    for col in TABLE3_COLUMNS:
        if col not in table.columns:
            raise DataError(name, f"required column is missing (have {list(table.columns)})",
                            row=0, field=col)
    for label, (_, rec) in enumerate(table.iterrows(), start=1):  # data row, 1-based
        if str(rec["direction"]).strip() not in DIRECTIONS:
            raise DataError(name, f"unknown direction {rec['direction']!r}; expected one of "
                            f"{sorted(DIRECTIONS)}", row=label, field="direction")
        for col in ("cluster_voxels", "x", "y", "z", "sdm_z", "p_voxel", "hedges_g"):
            v = pd.to_numeric(pd.Series([rec[col]]), errors="coerce").iloc[0]
            if not np.isfinite(v):
                raise DataError(name, f"not a number: {rec[col]!r}", row=label, field=col)
        for col in ("i2", "egger_p"):  # may be left blank (then not checkable)
            cell = rec[col]
            if isinstance(cell, str) and cell.strip() == "":
                continue
            if cell is None or (isinstance(cell, float) and math.isnan(cell)):
                continue
            v = pd.to_numeric(pd.Series([cell]), errors="coerce").iloc[0]
            if not np.isfinite(v):
                raise DataError(name, f"not a number: {cell!r}", row=label, field=col)
    for col in TABLE3_COLUMNS[3:]:
        out[col] = pd.to_numeric(table[col].replace("", np.nan), errors="coerce").astype(float)
    return out


def _decimals(cell, default: int) -> int:
    """Decimals of a printed number (``"3.510"`` -> 3); ``default`` for a non-text value."""
    if isinstance(cell, str):
        text = cell.strip().lower()
        if "e" in text:
            mant, exp = text.split("e", 1)
            frac = mant.split(".", 1)[1] if "." in mant else ""
            return max(len(frac) - int(exp), 0)
        return len(text.split(".", 1)[1]) if "." in text else 0
    return default


def _text(cell, decimals: int) -> str:
    if isinstance(cell, str):
        return cell.strip()
    return f"{float(cell):.{decimals}f}"


def study_samples(studies: pd.DataFrame, name: str = STUDIES_FILE) -> pd.DataFrame:
    """Per-study ``study, n1, n2`` from a study table (``load_studies`` or raw ``studies.tsv``).

    Uses ``n1``/``n2`` where present, else ``n_patients``/``n_controls``.

    Raises
    ------
    DataError
        A missing column, or a group size that is not a positive whole number (file, row and
        field named; rows counted from 1 in table order).
    """
    c1 = "n1" if "n1" in studies.columns else "n_patients"
    c2 = "n2" if "n2" in studies.columns else "n_controls"
    for col in (c1, c2):
        if col not in studies.columns:
            raise DataError(name, "required column is missing (need n1/n2 or "
                            "n_patients/n_controls)", row=0, field=col)
    ids = studies["study"].astype(str).tolist() if "study" in studies.columns else [
        str(i) for i in range(1, len(studies) + 1)]
    n = {}
    for col in (c1, c2):
        vals = pd.to_numeric(studies[col], errors="coerce").to_numpy(dtype=float)
        for i, v in enumerate(vals, start=1):
            if not (np.isfinite(v) and v >= 1 and float(v).is_integer()):
                raise DataError(name, f"group size must be a positive whole number, got "
                                f"{studies[col].iloc[i - 1]!r} (study {ids[i - 1]})", row=i,
                                field=col)
        n[col] = vals
    return pd.DataFrame({"study": ids, "n1": n[c1], "n2": n[c2]})


# ---------------------------------------------------------------------------------------------
# arithmetic


def within_variances(samples: pd.DataFrame) -> np.ndarray:
    """Smallest variance of each study's Hedges' g, ``1/n1 + 1/n2`` (its exact value at g = 0)."""
    from analysis.sdm.statistics.hedges import g_variance

    return np.asarray(g_variance(0.0, samples["n1"].to_numpy(float),
                                 samples["n2"].to_numpy(float)), dtype=float)


def fixed_effect_se(v: np.ndarray) -> float:
    """``sqrt(1 / sum(1/v))``: the smallest SE of any weighted mean of the studies' effects."""
    v = np.asarray(v, dtype=float)
    return float(np.sqrt(1.0 / np.sum(1.0 / v)))


def typical_within_variance(v: np.ndarray) -> float:
    """Higgins & Thompson's typical within-study variance ``(k-1) S1 / (S1² - S2)``, ``Sr = sum w^r``.

    For an intercept-only model this is ``(k - p) / tr P_FE`` of SDM-PSI's I²
    (:mod:`analysis.sdm.statistics.random_effects`).
    """
    w = 1.0 / np.asarray(v, dtype=float)
    return float((len(w) - 1) * w.sum() / (w.sum() ** 2 - (w * w).sum()))


def random_effects_se(v: np.ndarray, tau2: float) -> float:
    """SE of the random-effects mean with between-study variance ``tau2``."""
    return float(np.sqrt(1.0 / np.sum(1.0 / (np.asarray(v, dtype=float) + float(tau2)))))


def tau2_from_i2(i2_pct: float, v: np.ndarray) -> float:
    """tau² implied by I² (in %): ``s² I² / (1 - I²)`` with :func:`typical_within_variance`."""
    f = float(i2_pct) / 100.0
    if not 0.0 <= f < 1.0:
        raise ValueError(f"I² must be in [0, 100) %, got {i2_pct}")
    return typical_within_variance(v) * f / (1.0 - f)


def float32_steps(p) -> np.ndarray:
    """``p / 2**-24``: integer when ``1 - p`` is a float32 number in [0.5, 1) (i.e. p < 0.5)."""
    return np.asarray(p, dtype=float) / FLOAT32_STEP


def p_interval(z: float, z_decimals: int, p_decimals: int,
               float32_output: bool = True) -> tuple[float, float]:
    """The printed one-tailed p values a printed SDM-Z allows.

    ``|z|`` may be anywhere within half a unit of its last printed digit; the p it gives,
    ``1 - Phi(|z|)``, may further be written as ``1 - float32(1 - p)`` (SDM-PSI's float32
    ``uncorrp`` map, half a step of ``2**-24`` either way) and is printed to ``p_decimals``.

    Returns
    -------
    (float, float)
        Smallest and largest printed p consistent with ``z``.
    """
    h = 0.5 * 10.0 ** -z_decimals
    a = abs(float(z))
    lo, hi = stats.norm.sf(a + h), stats.norm.sf(max(a - h, 0.0))
    tol = 0.5 * 10.0 ** -p_decimals
    if float32_output:
        tol += 0.5 * float(np.spacing(np.float32(1.0 - hi)))
    return float(lo - tol), float(hi + tol)


def z_threshold(alpha: float) -> float:
    """One-tailed z of a voxel p threshold (``Phi^-1(1 - alpha)``; 2.807 for 0.0025)."""
    return float(stats.norm.isf(alpha))


def single_peak_extent(z_peak: float, z_thr: float, xyz, fwhm_mm: float,
                       affine: np.ndarray) -> int:
    """Voxels of a 2 mm grid an isotropic Gaussian blob of height ``|z_peak|`` lifts above ``z_thr``.

    Counts the grid points (voxel centres of ``affine``) within
    ``r = sigma sqrt(2 ln(|z_peak| / z_thr))`` of ``xyz``, ``sigma = FWHM / sqrt(8 ln 2)``,
    i.e. ``{d : |z_peak| exp(-d² / 2 sigma²) >= z_thr}``; no mask.

    Parameters
    ----------
    z_peak : float
        Printed peak SDM-Z (its sign is ignored).
    z_thr : float
        Threshold z (:func:`z_threshold`).
    xyz : sequence of 3 float
        Peak (MNI mm); need not be a voxel centre.
    fwhm_mm : float
        FWHM of the Gaussian kernel (SDM-PSI: 20 mm).
    affine : ndarray, shape (4, 4)
        Voxel-to-MNI affine of the grid (its voxel centres are counted).

    Returns
    -------
    int
        Number of voxels; 0 when ``|z_peak| < z_thr``.
    """
    a = abs(float(z_peak))
    if a < z_thr:
        return 0
    sigma = float(fwhm_mm) / math.sqrt(8.0 * math.log(2.0))
    r2 = 2.0 * sigma * sigma * math.log(a / z_thr)
    aff = np.asarray(affine, dtype=float)
    centre = mni_to_ijk(xyz, aff)[0]
    step = float(np.min(np.abs(np.diag(aff[:3, :3]))))
    reach = int(math.ceil(math.sqrt(r2) / step)) + 1
    base = np.floor(centre).astype(int)
    rng = np.arange(-reach, reach + 2)
    ijk = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3) + base
    pts = ijk_to_mni(ijk, aff)
    d2 = np.sum((pts - np.asarray(xyz, float)) ** 2, axis=1)
    return int(np.count_nonzero(d2 <= r2 * (1 + 1e-12)))


def kernel_single_peak_extent(z_peak: float, z_thr: float, xyz, kernel) -> int:
    """Connected in-mask voxels with ``|z_peak| K >= z_thr`` for a kernel of the engine.

    Parameters
    ----------
    z_peak, z_thr : float
        Printed peak SDM-Z and the threshold z.
    xyz : sequence of 3 float
        Peak (MNI mm).
    kernel : object
        Has ``weights(xyz) -> (voxel indices, K)`` and ``space.ijk`` (e.g.
        :class:`analysis.sdm.maps.kernel.IsotropicKernel` or ``AnisotropicKernel``).

    Returns
    -------
    int
        Size of the 26-connected component of ``{K >= z_thr / |z_peak|}`` that holds the
        largest ``K`` (the peak); 0 when ``|z_peak| < z_thr`` or the kernel reaches no voxel.
    """
    a = abs(float(z_peak))
    if a < z_thr:
        return 0
    idx, k = kernel.weights(np.asarray(xyz, dtype=float))
    idx, k = np.asarray(idx), np.asarray(k, dtype=float)
    sel = k >= z_thr / a - 1e-6  # K is stored as float32
    if not sel.any():
        return 0
    ijk = np.asarray(kernel.space.ijk)[idx[sel]]
    top = ijk[np.argmax(k[sel])]
    lo = ijk.min(axis=0)
    vol = np.zeros(tuple(ijk.max(axis=0) - lo + 1), dtype=bool)
    vol[tuple((ijk - lo).T)] = True
    labels, _ = ndimage.label(vol, structure=np.ones((3, 3, 3), dtype=bool))
    return int(np.count_nonzero(labels == labels[tuple(top - lo)]))


# ---------------------------------------------------------------------------------------------
# the checks


def _row(cluster, rec, quantity, printed, recomputed, lower, upper, verdict, reason) -> dict:
    if verdict not in VERDICTS:  # pragma: no cover - programming error
        raise AssertionError(verdict)
    return {"cluster": int(cluster), "direction": str(rec["direction"]).strip(),
            "region": str(rec["region"]).strip(), "quantity": quantity, "printed": printed,
            "recomputed": float(recomputed), "lower": float(lower), "upper": float(upper),
            "verdict": verdict, "reason": reason}


def _ok(flag: bool) -> str:
    return "consistent" if flag else "inconsistent"


def table3_consistency(published: pd.DataFrame, studies: pd.DataFrame, *,
                       p_uncorrected: float, min_cluster_voxels: int, fwhm_mm: float,
                       kernel=None, float32_output: bool = True,
                       published_name: str = TABLE3_FILE,
                       studies_name: str = STUDIES_FILE) -> pd.DataFrame:
    """Check the printed Table 3 against itself, the samples and the paper's text.

    Parameters
    ----------
    published : DataFrame
        Table 3 with the columns of ``published_table3.tsv`` (:data:`TABLE3_COLUMNS`); text cells
        (:func:`load_published_table3`) keep the printed number of decimals, which sets the
        rounding allowed; numeric cells use :data:`DEFAULT_DECIMALS` (Table 3's).
    studies : DataFrame
        The included studies with ``n1``/``n2`` (:func:`analysis.data_tables.load_studies`) or
        ``n_patients``/``n_controls`` (raw ``studies.tsv``).
    p_uncorrected, min_cluster_voxels, fwhm_mm : float, int, float
        The paper's voxel threshold (0.0025), extent (11, i.e. k > 10) and kernel FWHM (20 mm)
        on SDM-PSI's grid; the pipeline passes the configuration's ``sdm.threshold`` and
        ``sdm.fwhm_mm`` (:func:`analysis.stages.params.table3_check_params`).
    kernel : object, optional
        A kernel of the engine (``weights(xyz)``, ``space``) for the single-peak extent; default
        the isotropic Gaussian without a mask (see the module docstring).
    float32_output : bool
        Allow half a float32 step of ``1 - p`` in the p check (SDM-PSI's output; default). With
        ``False`` the check is statcheck's rounding rule alone.
    published_name, studies_name : str
        File names used in error messages.

    Returns
    -------
    DataFrame
        :data:`CHECK_COLUMNS`: ``cluster`` (1-based row of Table 3), ``direction``, ``region``,
        ``quantity`` (see the module docstring), ``printed`` (the value(s) as printed, text),
        ``recomputed`` (the value recomputed from the other printed numbers, NaN if none),
        ``lower``/``upper`` (the range the check allows, NaN = unbounded), ``verdict`` (one of
        :data:`VERDICTS`) and ``reason`` (one line with the arithmetic).

    Raises
    ------
    DataError
        A missing column, an unknown direction, a non-numeric cell (file, row, field named),
        or a study table without valid group sizes.
    """
    from analysis.sdm.maps.space import grid_affine

    alpha = float(p_uncorrected)
    min_k = int(min_cluster_voxels)
    fwhm = float(fwhm_mm)
    affine = grid_affine()
    zc = z_threshold(alpha)

    num = _numbers(published, published_name)
    samples = study_samples(studies, studies_name)
    v = within_variances(samples)
    se_fe = fixed_effect_se(v)
    k_st, n1, n2 = len(samples), int(samples["n1"].sum()), int(samples["n2"].sum())
    g_min = zc * se_fe
    sample_txt = f"{k_st} studies, {n1} patients, {n2} controls"

    rows = []
    for c, (idx, rec) in enumerate(published.iterrows(), start=1):
        x = num.loc[idx]
        sign = DIRECTIONS[str(rec["direction"]).strip()]
        dz = _decimals(rec["sdm_z"], DEFAULT_DECIMALS["sdm_z"])
        dp = _decimals(rec["p_voxel"], DEFAULT_DECIMALS["p_voxel"])
        dg = _decimals(rec["hedges_g"], DEFAULT_DECIMALS["hedges_g"])
        z, p, g = x["sdm_z"], x["p_voxel"], x["hedges_g"]
        hz, hg = 0.5 * 10.0 ** -dz, 0.5 * 10.0 ** -dg
        z_txt, p_txt = _text(rec["sdm_z"], dz), _text(rec["p_voxel"], dp)
        g_txt = _text(rec["hedges_g"], dg)

        # p from z (statcheck)
        p_z = float(stats.norm.sf(abs(z)))
        lo, hi = p_interval(z, dz, dp, float32_output)
        ok = lo <= p <= hi
        steps = float(float32_steps(p))
        on_grid = abs(steps - round(steps)) <= 0.5 * 10.0 ** -dp / FLOAT32_STEP + 1e-6
        reason = (f"1 - Phi(|z|) for |z| = {abs(z):.{dz}f} +/- {hz:g} gives "
                  f"[{stats.norm.sf(abs(z) + hz):.4g}, {stats.norm.sf(abs(z) - hz):.4g}]")
        reason += (f"; with half a float32 step of 1 - p: [{lo:.4g}, {hi:.4g}]"
                   if float32_output else "")
        reason += (f"; printed p = {steps:.3f} x 2^-24 "
                   f"({'a' if on_grid else 'not a'} value of a float32 1 - p map)")
        if not ok:
            decision = (p < alpha) != (p_z < alpha)
            reason += (f"; {'changes' if decision else 'same'} significance at p < {alpha:g}")
        rows.append(_row(c, rec, "p_voxel", p_txt, p_z, lo, hi, _ok(ok), reason))

        # significance at the paper's threshold
        ok = (p < alpha) and (abs(z) + hz >= zc)
        rows.append(_row(c, rec, "significance", f"p = {p_txt}; z = {z_txt}", p_z, 0.0, alpha,
                         _ok(ok), f"footnote b / Results: voxel p < {alpha:g}, i.e. |z| >= "
                         f"{zc:.3f}; printed p {'<' if p < alpha else '>='} {alpha:g}, |z| "
                         f"{'>=' if abs(z) + hz >= zc else '<'} {zc:.3f}"))

        # signs
        ok = np.sign(z) == sign and np.sign(g) == sign
        rows.append(_row(c, rec, "sign", f"{rec['direction']}; z = {z_txt}; g = {g_txt}",
                         np.nan, np.nan, np.nan, _ok(bool(ok)),
                         f"{rec['direction']} needs z and g {'> 0' if sign > 0 else '< 0'}; "
                         f"printed z {z_txt}, g {g_txt}"))

        # peak on the 2 mm grid
        xyz = x[["x", "y", "z"]].to_numpy(float)
        ijk = mni_to_ijk(xyz, affine)[0]
        ok = bool(np.allclose(ijk, np.round(ijk), atol=1e-6))
        rows.append(_row(c, rec, "peak_coordinates",
                         ",".join(_text(rec[a], 0) for a in ("x", "y", "z")), np.nan, np.nan,
                         np.nan, _ok(ok),
                         "a voxel centre of the 2 mm grid (even mm)" if ok else
                         f"not a voxel centre of the 2 mm grid: voxel index {np.round(ijk, 2)}"))

        # Hedges' g: smallest |g| that can be significant with these samples
        ok = abs(g) + hg >= g_min
        rows.append(_row(c, rec, "hedges_g", g_txt, np.nan, g_min, np.nan, _ok(ok),
                         f"|g| >= {zc:.3f} x SE_FE = {g_min:.4f} for p < {alpha:g} "
                         f"(SE_FE = {se_fe:.4f}: fixed-effect SE of {sample_txt}; random "
                         f"effects and imputation only add variance); no upper bound (study "
                         f"effects not printed)"))

        # implied SE against the fixed-effect floor
        se = abs(g) / abs(z) if z != 0 else np.inf
        se_hi = (abs(g) + hg) / max(abs(z) - hz, 1e-300)
        ok = se_hi >= se_fe
        rows.append(_row(c, rec, "standard_error", f"{g_txt} / {z_txt}", se, se_fe, np.nan,
                         _ok(ok), f"SE = g/z = {se:.4f} {'>=' if ok else '<'} SE_FE = "
                         f"{se_fe:.4f} ({sample_txt}), i.e. |z| <= |g|/SE_FE = "
                         f"{abs(g) / se_fe:.2f}"))

        # complete-data random-effects SE at the printed I²: for the reader only
        i2 = x["i2"]
        if np.isfinite(i2) and 0 <= i2 < 100:
            tau2 = tau2_from_i2(i2, v)
            se_re = random_effects_se(v, tau2)
            rows.append(_row(c, rec, "standard_error_complete_data", f"{g_txt} / {z_txt}", se,
                             se_re, np.nan, "not checkable",
                             f"without imputation, tau2 = {tau2:.5f} (I2 = "
                             f"{_text(rec['i2'], 6)} %) gives SE = {se_re:.4f}; the implied "
                             f"variance is {se * se / (se_re * se_re):.2f} times that, the "
                             f"excess being between-imputation variance of unknown size"))
        else:
            rows.append(_row(c, rec, "standard_error_complete_data", f"{g_txt} / {z_txt}", se,
                             np.nan, np.nan, "not checkable",
                             "no usable I2 printed, tau2 unknown"))

        # I²
        i2_txt = _text(rec["i2"], 6) if np.isfinite(i2) else ""
        if not np.isfinite(i2):
            rows.append(_row(c, rec, "i2", i2_txt, np.nan, 0.0, I2_LIMIT_PCT, "not checkable",
                             "I2 not printed"))
        else:
            possible = 0.0 <= i2 < 100.0
            ok = possible and i2 < I2_LIMIT_PCT
            why = (f"I2 = {i2_txt} % is below {I2_LIMIT_PCT:g} % as the Results state"
                   if ok else f"I2 = {i2_txt} % is not below {I2_LIMIT_PCT:g} % (Results: all "
                   f"below {I2_LIMIT_PCT:g} %)" if possible else
                   f"I2 = {i2_txt} % is impossible (I2 lies in [0, 100) %)")
            rows.append(_row(c, rec, "i2", i2_txt, np.nan, 0.0, I2_LIMIT_PCT, _ok(ok), why))

        # Egger's p
        e = x["egger_p"]
        e_txt = _text(rec["egger_p"], 3) if np.isfinite(e) else ""
        if not np.isfinite(e):
            rows.append(_row(c, rec, "egger_p", e_txt, np.nan, EGGER_ALPHA, 1.0, "not checkable",
                             "Egger's p not printed"))
        else:
            ok = EGGER_ALPHA < e <= 1.0
            why = (f"p = {e_txt} > {EGGER_ALPHA:g} as the Results state" if ok else
                   f"p = {e_txt} is not a probability" if not 0 <= e <= 1 else
                   f"p = {e_txt} <= {EGGER_ALPHA:g} (Results: all > {EGGER_ALPHA:g})")
            rows.append(_row(c, rec, "egger_p", e_txt, np.nan, EGGER_ALPHA, 1.0, _ok(ok), why))

        # extent threshold
        k = x["cluster_voxels"]
        k_txt = _text(rec["cluster_voxels"], 0)
        ok = float(k).is_integer() and k >= min_k
        rows.append(_row(c, rec, "cluster_voxels", k_txt, np.nan, float(min_k), np.nan, _ok(ok),
                         f"Methods: k > {min_k - 1}; printed {k_txt} voxels"))

        # extent one recreated peak can give
        iso = single_peak_extent(z, zc, xyz, fwhm, affine)
        if kernel is not None:
            bound = kernel_single_peak_extent(z, zc, xyz, kernel)
            how = (f"{bound} connected voxels with |z| K >= {zc:.3f} for the given kernel "
                   f"(isotropic, unmasked: {iso})")
        else:
            bound = iso
            r = (fwhm / math.sqrt(8 * math.log(2))) * math.sqrt(
                2 * math.log(abs(z) / zc)) if abs(z) >= zc else 0.0
            how = (f"{bound} grid voxels within {r:.2f} mm, where |z| K(d) >= {zc:.3f} for the "
                   f"isotropic {fwhm:g} mm FWHM kernel (no mask)")
        if bound == 0:
            verdict = "inconsistent" if k > 0 else "consistent"
            why = (f"peak |z| = {abs(z):.{dz}f} < {zc:.3f}: no voxel of the cluster can reach "
                   f"the threshold, yet {k_txt} are printed")
        elif k <= bound:
            verdict, why = "consistent", (f"{k_txt} <= {how}: one recreated peak could give "
                                          f"it alone, so the extent does not show convergence")
        else:
            verdict, why = "not checkable", (f"{k_txt} > {how}: more than one peak must "
                                             f"contribute, and which is not printed")
        rows.append(_row(c, rec, "cluster_extent_single_peak", k_txt, float(bound), np.nan,
                         float(bound), verdict, why))
    out = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    LGR.info("Table 3 checks: %s", out["verdict"].value_counts().to_dict())
    return out


def verdict_counts(checks: pd.DataFrame) -> dict[str, int]:
    """Number of checks per verdict (every verdict of :data:`VERDICTS` present, maybe 0)."""
    counts = checks["verdict"].value_counts()
    return {v: int(counts.get(v, 0)) for v in VERDICTS}
