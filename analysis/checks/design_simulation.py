"""What the design of He et al. (2024) implies, checked by simulation without the coordinates.

Ten of the eleven studies' peak tables are not public, so the meta-analytic clusters cannot be
recomputed. What *can* be computed is what this design — these samples, these study thresholds,
these reported directions, this many peaks, SDM-PSI's pipeline — does with data of known truth:

**Null maximum (family-wise error threshold of the design).** Voxel-wise FWE control by the
maximum statistic (Nichols & Holmes, 2002) needs the distribution of the largest SDM-Z of the
whole map under the null hypothesis. SDM-PSI estimates it from permutations of subject images
of the data at hand (Albajes-Eizagirre et al., 2019). Here it is estimated instead from
simulated meta-analyses matched to the design: every study a null group-difference map with its
real ``n1``, ``n2`` and threshold, listing its highest local maxima in each direction it
reported, as many as the compendium's peak table lists for it
(:func:`analysis.simulate.simulate_study_family`), then the whole pipeline (SDM pre-processing,
MetaNSUE imputation, random-effects model; :func:`fit_peaks`). The ``1 - alpha`` quantile of
the maximum in one direction is the SDM-Z a voxel needs for FWE ``alpha`` in that direction.
Each direction is corrected separately, as SDM-PSI does (its ``corrp_voxel`` and
``corrp_voxel_neg`` maps); the design is not symmetric (four studies reported only decreases,
one only increases), so the two maxima have different distributions and are never pooled.

The quantile comes with a distribution-free confidence interval from order statistics
(:func:`quantile_ci`; the number of null maxima below the true quantile is binomial), which is
unbounded above with fewer than ``log(alpha_ci / 2) / log(q)`` replicates (72 for the 95th
percentile and a 95 % interval), and with a model-based one: maxima of many weakly dependent
variables are close to Gumbel-distributed (Gumbel, 1958), whose quantile is estimated by
maximum likelihood with a parametric-bootstrap interval (:func:`gumbel_quantile`). Each
published peak gets the design's FWE p, the share of null maxima at least as large
(:func:`exceedance`, with the Monte-Carlo p ``(r + 1) / (n + 1)`` of North et al., 2002, a
Clopper-Pearson interval, and the Gumbel tail probability): it passes the Monte-Carlo test when
``(r + 1) / (n + 1) <= alpha`` (Barnard, 1963). The smallest attainable Monte-Carlo p is
``1 / (n + 1)`` (:func:`smallest_monte_carlo_p`), so with fewer than ``1 / alpha - 1`` replicates
(19 for 5 %) no verdict is reachable and every peak is *undecided at n replicates*
(:func:`decidable`); a Gumbel distribution is fitted only to at least
:data:`GUMBEL_MIN_MAXIMA` maxima (a two-parameter extreme-value fit to fewer gives tail
probabilities that the sample cannot support). The
same null meta-analyses give the family-wise false-positive rate of the paper's own thresholds
(any cluster at voxel p < 0.0025, peak SDM-Z > 1, k > 10) in this design.

**Sensitivity.** Simulated meta-analyses of the same design with a true effect of Hedges' g
``c`` at every published location (sign of the published direction, between-study SD
``simulation.heterogeneity_tau``), over a grid of ``c``: how often the pipeline reports a cluster
of the same sign whose peak lies within ``radius`` mm (:func:`match_locations`), with the paper's
thresholds and with the design's voxel-FWE threshold, and which g and SDM-Z it then reports
(:func:`summarise_sensitivity`). A true effect is *compatible* with a published cluster when the
published g and SDM-Z both lie in the central range of what the pipeline reports when it
detects that effect (:func:`compatible_effects`); detections are selected on significance, so
the reported g is inflated at low power (the winner's curse; Button et al., 2013).

References
----------
Albajes-Eizagirre, A., Solanes, A., Vieta, E., Radua, J. (2019). Voxel-based meta-analysis via
permutation of subject images (PSI): theory and implementation for SDM. NeuroImage 186, 174-184.
Barnard, G. A. (1963). Discussion of "The spectral analysis of point processes" by M. S.
Bartlett. J R Stat Soc B 25, 294.
Button, K. S. et al. (2013). Power failure: why small sample size undermines the reliability of
neuroscience. Nat Rev Neurosci 14, 365-376.
Gumbel, E. J. (1958). Statistics of extremes. Columbia University Press.
He, J. et al. (2024). Neural basis of pain empathy dysregulations in mental disorders: a
pre-registered neuroimaging meta-analysis. Table 3; Methods l. 172-177.
Nichols, T. E. & Holmes, A. P. (2002). Nonparametric permutation tests for functional
neuroimaging: a primer with examples. Hum Brain Mapp 15, 1-25.
North, B. V., Curtis, D. & Sham, P. C. (2002). A note on the calculation of empirical P values
from Monte Carlo procedures. Am J Hum Genet 71, 439-441.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.sdm.errors import DataError

LGR = logging.getLogger(__name__)

#: sign of an effect -> direction label of Table 3 and of :mod:`analysis.sdm.inference.clusters`
DIRECTION_OF_SIGN = {1: "Patients>Controls", -1: "Patients<Controls"}
#: direction label -> sign
SIGN_OF_DIRECTION = {v: k for k, v in DIRECTION_OF_SIGN.items()}
#: columns of a table of null maxima (one row per simulated meta-analysis)
NULL_COLUMNS = ["replicate", "max_z", "max_neg_z", "max_tfce", "max_neg_tfce",
                "n_clusters_pos", "n_clusters_neg", "n_peaks", "n_peaks_pos", "n_peaks_neg",
                "x_max_z", "y_max_z", "z_max_z", "x_max_neg_z", "y_max_neg_z", "z_max_neg_z"]
#: columns of the per-replicate sensitivity table
SENSITIVITY_COLUMNS = ["replicate", "effect_size", "location", "direction", "x", "y", "z",
                       "true_g_mean", "detected", "detected_fwe", "covered", "distance_mm",
                       "sdm_z", "hedges_g", "cluster_voxels", "n_peaks"]
#: fewest null maxima a Gumbel distribution is fitted to (:func:`gumbel_quantile`)
GUMBEL_MIN_MAXIMA = 20
#: why a Gumbel quantile is missing when there are fewer maxima than that
GUMBEL_REFUSAL = f"not fitted: fewer than {GUMBEL_MIN_MAXIMA} null maxima"
#: fewest sensitivity replicates per effect size from which a detection probability is read as
#: a verdict (compatible effect sizes): with 10, the 95 % Clopper-Pearson interval of an
#: observed 0 or 1 reaches no further than 0.31 from it; with fewer the text says "undecided"
SENSITIVITY_MIN_REPLICATES = 10
#: columns read from the PSI permutation table of stage ``robustness``
PERMUTATION_COLUMNS = ["permutation", "max_z", "max_neg_z", "max_tfce", "max_neg_tfce"]


# ---------------------------------------------------------------------------------------------
# the design


def design_quotas(studies: pd.DataFrame, peaks: pd.DataFrame) -> dict[str, dict[int, int]]:
    """Peaks listed per study and reported direction: what each simulated study lists.

    Parameters
    ----------
    studies : DataFrame
        ``study`` and ``contrasts_reported`` (:func:`analysis.data_tables.load_studies`).
    peaks : DataFrame
        ``study`` and ``sign`` of every listed peak (real or stand-in).

    Returns
    -------
    dict
        ``{study: {sign: count}}`` over the directions the study reported (a reported
        direction without peaks counts 0, so it is simulated but lists nothing).

    Raises
    ------
    DataError
        A peak in a direction its study did not report (``peaks.tsv``, its row and ``sign``).
    """
    from analysis.simulate import reported_directions

    out: dict[str, dict[int, int]] = {}
    for r in studies.itertuples(index=False):
        dirs = reported_directions(r.contrasts_reported)
        out[str(r.study)] = {int(d): 0 for d in dirs}
    for row, (study, sign) in enumerate(zip(peaks["study"].astype(str),
                                            pd.to_numeric(peaks["sign"]).astype(int)), start=1):
        q = out.get(study)
        if q is None or sign not in q:
            raise DataError("peaks.tsv", f"study {study!r} lists a peak of sign {sign:+d}, a "
                            f"direction it did not report ({sorted(q or {})})", row=row,
                            field="sign")
        q[sign] += 1
    return out


def simulate_design(studies: pd.DataFrame, quotas: dict, seed: int, stream: str, cfg: dict,
                    effects: pd.DataFrame | None = None, scales: Sequence[float] = (1.0,),
                    n_jobs: int = 1) -> tuple[list[pd.DataFrame], np.ndarray]:
    """One simulated meta-analysis of the design, for each scale of the planted effects.

    Study ``s`` draws from ``derive_rng(seed, f"{stream}/{s}")``, so a study's map does not
    depend on the others; within a study one noise realisation serves every scale
    (:func:`analysis.simulate.simulate_study_family`). Peaks are given in MNI space whatever
    the study's reporting space (the pipeline would convert Talairach coordinates back), with t
    rounded to 0.01 as a printed table.

    Parameters
    ----------
    studies : DataFrame
        ``study, n1, n2, t_thr``.
    quotas : dict
        :func:`design_quotas`.
    seed : int
        Seed of the simulation.
    stream : str
        Name of this meta-analysis' stream (e.g. ``"design/null/3"``).
    cfg : dict
        Configuration (section ``simulation``).
    effects : DataFrame, optional
        Planted effects ``x, y, z, g`` at scale 1 (none: the null).
    scales : sequence of float
        Multipliers of the effects' g.
    n_jobs : int
        Studies simulated at once in threads (joblib; -1 = all cores). The results do not
        depend on it: every study has its own stream.

    Returns
    -------
    peaks : list of DataFrame
        One peak table per scale with ``study, x, y, z, t, sign`` (ready for
        :class:`analysis.sdm.inputs.dataset.SDMDataset`).
    true_g : ndarray, shape (len(scales), n_studies, n_effects)
        Each study's true effect at each planted effect.
    """
    from joblib import Parallel, delayed

    from analysis.sdm.rng import derive_rng
    from analysis.simulate import simulate_study_family

    def one(r):
        n2 = pd.to_numeric(r.n2, errors="coerce")
        n2 = int(n2) if np.isfinite(n2) and n2 > 0 else None
        return simulate_study_family(int(r.n1), n2, float(r.t_thr), quotas[str(r.study)],
                                     derive_rng(int(seed), f"{stream}/{r.study}"), cfg,
                                     effects=effects, scales=scales)

    rows = list(studies.itertuples(index=False))
    # the smoothing, labelling and filtering of scipy.ndimage run without the GIL
    found = (Parallel(n_jobs=n_jobs, prefer="threads")(delayed(one)(r) for r in rows)
             if n_jobs != 1 and len(rows) > 1 else [one(r) for r in rows])
    per_scale: list[list[pd.DataFrame]] = [[] for _ in scales]
    true_g = []
    for r, (listed, tg) in zip(rows, found, strict=True):
        true_g.append(tg)
        for i, p in enumerate(listed):
            per_scale[i].append(pd.DataFrame({
                "study": str(r.study), "x": p["x"].astype(float), "y": p["y"].astype(float),
                "z": p["z"].astype(float),
                "t": np.round(p["stat_value"].to_numpy(dtype=float), 2),
                "sign": p["sign"].astype(int)}))
    cols = ["study", "x", "y", "z", "t", "sign"]
    peaks = [pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
             for parts in per_scale]
    n_eff = 0 if effects is None else len(effects)
    tg = np.stack(true_g, axis=1) if true_g else np.zeros((len(scales), 0, n_eff))
    return peaks, tg


def fit_peaks(studies: pd.DataFrame, peaks: pd.DataFrame, space, kernel, estimator, *,
              unknown_peak_mode: str = "corrected", combine: str = "weighted"):
    """The pipeline on one simulated peak table: bound maps, then the estimator's fit.

    Parameters
    ----------
    studies : DataFrame
        ``study, n1, n2, t_thr``.
    peaks : DataFrame
        ``study, x, y, z, t, sign`` (MNI).
    space : MaskSpace
        Analysis space (maps are recreated on the kernel's space and restricted to it).
    kernel : object
        A prepared kernel (:func:`analysis.sdm.maps.kernel.make_kernel`), reused across
        meta-analyses for its peak cache.
    estimator : SDMPSI
        The configured estimator (imputations, heterogeneity, seed).
    unknown_peak_mode, combine : str
        As :func:`analysis.sdm.maps.preprocess.preprocess`.

    Returns
    -------
    MetaResult
    """
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.preprocess import preprocess

    ds = SDMDataset(studies[["study", "n1", "n2", "t_thr"]].reset_index(drop=True),
                    peaks.reset_index(drop=True))
    b = preprocess(ds, space, unknown_peak_mode=unknown_peak_mode, combine=combine,
                   kernel=kernel, progress=False)
    return estimator.fit_bounds(b.lower, b.upper, b.n1, b.n2, space, studies=list(b.studies))


def null_maxima(z: np.ndarray, space, tfce_params: dict | None = None) -> dict:
    """Largest SDM-Z and TFCE of each direction of one map, and where the SDM-Z maxima lie.

    Parameters
    ----------
    z : ndarray (V,)
        SDM-Z map.
    space : MaskSpace
        Its voxel space.
    tfce_params : dict, optional
        ``E, H, n_steps, connectivity`` of :func:`analysis.sdm.inference.tfce.tfce`; ``None`` skips TFCE
        (NaN).

    Returns
    -------
    dict
        ``max_z``, ``max_neg_z`` (largest ``-z``), ``max_tfce``, ``max_neg_tfce`` and the MNI
        coordinates of the two SDM-Z maxima, as the columns of :data:`NULL_COLUMNS`.
    """
    z = np.where(np.isfinite(z), np.asarray(z, dtype=float), 0.0)
    out = {"max_z": float(z.max()), "max_neg_z": float((-z).max())}
    if tfce_params is not None:
        from analysis.sdm.inference.tfce import tfce

        pos, neg = tfce(z, space, **tfce_params)
        out.update(max_tfce=float(pos.max()), max_neg_tfce=float(neg.max()))
    else:
        out.update(max_tfce=np.nan, max_neg_tfce=np.nan)
    for name, v in (("max_z", int(np.argmax(z))), ("max_neg_z", int(np.argmin(z)))):
        x, y, zz = (int(round(c)) for c in space.xyz[v])
        out.update({f"x_{name}": x, f"y_{name}": y, f"z_{name}": zz})
    return out


# ---------------------------------------------------------------------------------------------
# quantiles of the null maximum


def quantile_ci(x, q: float = 0.95, confidence: float = 0.95) -> dict:
    """Empirical quantile with a distribution-free confidence interval from order statistics.

    The number of the ``n`` values below the true ``q``-quantile is Binomial(n, q), so
    ``[x_(l), x_(u)]`` with ``l = F^-1(a/2)`` and ``u = F^-1(1 - a/2) + 1`` (``F`` that
    binomial's distribution function, ``a = 1 - confidence``) covers it with probability at
    least ``confidence`` (e.g. Conover, 1999, §3.2). An index beyond the sample makes that end
    unbounded (``-inf``/``inf``).

    Parameters
    ----------
    x : array-like
        The sample (e.g. null maxima).
    q : float
        Quantile (0.95 for FWE 5 %).
    confidence : float
        Coverage of the interval.

    Returns
    -------
    dict
        ``estimate`` (:func:`numpy.quantile`, linear interpolation), ``lower``, ``upper``,
        ``coverage`` (the exact binomial coverage of the bounded interval; NaN when an end is
        unbounded) and ``n``.
    """
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    if n == 0:
        return {"estimate": np.nan, "lower": -np.inf, "upper": np.inf, "coverage": np.nan,
                "n": 0}
    a = 1.0 - float(confidence)
    b = stats.binom(n, q)
    lo_i = int(b.ppf(a / 2.0))          # order statistic x_(lo_i), 1-based; 0 = unbounded
    hi_i = int(b.ppf(1.0 - a / 2.0)) + 1
    lower = float(x[lo_i - 1]) if lo_i >= 1 else -np.inf
    upper = float(x[hi_i - 1]) if hi_i <= n else np.inf
    coverage = (float(b.cdf(hi_i - 1) - b.cdf(lo_i - 1))
                if lo_i >= 1 and hi_i <= n else np.nan)
    return {"estimate": float(np.quantile(x, q)), "lower": lower, "upper": upper,
            "coverage": coverage, "n": n}


def gumbel_quantile(x, q: float = 0.95, confidence: float = 0.95, n_boot: int = 2000,
                    rng: np.random.Generator | None = None,
                    min_n: int = GUMBEL_MIN_MAXIMA) -> dict:
    """Quantile of a Gumbel distribution fitted to maxima, with a parametric-bootstrap interval.

    ``loc`` and ``scale`` by maximum likelihood (:func:`scipy.stats.gumbel_r.fit`); the
    quantile is ``loc - scale log(-log q)``; the interval is the percentile interval of the
    quantiles of ``n_boot`` refits to samples of the same size drawn from the fitted
    distribution (Efron & Tibshirani, 1993, ch. 13).

    No distribution is fitted to fewer than ``min_n`` maxima (default
    :data:`GUMBEL_MIN_MAXIMA`): two parameters and a tail quantile estimated from a handful of
    maxima would print tail probabilities far beyond what the sample resolves.

    Parameters
    ----------
    x : array-like
        Maxima (at least ``min_n``).
    q, confidence : float
        Quantile and coverage.
    n_boot : int
        Bootstrap samples.
    rng : numpy.random.Generator, optional
        Stream of the bootstrap (default seed 0).
    min_n : int
        Fewest maxima fitted.

    Returns
    -------
    dict
        ``estimate``, ``lower``, ``upper``, ``loc``, ``scale``, ``n`` and ``fitted``; NaN
        (``fitted`` False, ``reason`` saying why) with fewer than ``min_n`` values or a
        degenerate sample.
    """
    x = np.asarray(x, dtype=float)
    nan = {"estimate": np.nan, "lower": np.nan, "upper": np.nan, "loc": np.nan,
           "scale": np.nan, "n": len(x), "fitted": False}
    if len(x) < max(int(min_n), 3):
        return {**nan, "reason": f"not fitted: fewer than {max(int(min_n), 3)} null maxima"}
    if np.ptp(x) <= 0:
        return {**nan, "reason": "not fitted: every null maximum is equal"}
    rng = np.random.default_rng(0) if rng is None else rng
    loc, scale = stats.gumbel_r.fit(x)
    yq = -math.log(-math.log(q))
    boot = np.empty(int(n_boot))
    draws = stats.gumbel_r.rvs(loc, scale, size=(int(n_boot), len(x)), random_state=rng)
    for i, d in enumerate(draws):
        bl, bs = stats.gumbel_r.fit(d)
        boot[i] = bl + bs * yq
    a = 1.0 - float(confidence)
    lo, hi = np.quantile(boot, [a / 2.0, 1.0 - a / 2.0])
    return {"estimate": float(loc + scale * yq), "lower": float(lo), "upper": float(hi),
            "loc": float(loc), "scale": float(scale), "n": len(x), "fitted": True,
            "reason": ""}


def exceedance(maxima, value: float, confidence: float = 0.95,
               gumbel: dict | None = None) -> dict:
    """Design FWE p of a statistic: how often the null maximum reaches it.

    Parameters
    ----------
    maxima : array-like
        Null maxima of the statistic's direction.
    value : float
        The statistic (e.g. a published peak's ``|SDM-Z|``).
    confidence : float
        Coverage of the Clopper-Pearson interval of ``P(max >= value)``.
    gumbel : dict, optional
        :func:`gumbel_quantile` output; adds the fitted tail probability.

    Returns
    -------
    dict
        ``n_exceed`` (null maxima ``>= value``), ``n``, ``p_monte_carlo`` =
        ``(n_exceed + 1) / (n + 1)`` (North et al., 2002), ``p_lower``, ``p_upper`` (exact
        binomial interval of ``n_exceed / n``) and ``p_gumbel``.
    """
    m = np.asarray(maxima, dtype=float)
    n = len(m)
    r = int(np.sum(m >= float(value)))
    out = {"n_exceed": r, "n": n, "p_monte_carlo": (r + 1) / (n + 1) if n else np.nan}
    if n:
        ci = stats.binomtest(r, n).proportion_ci(confidence, method="exact")
        out.update(p_lower=float(ci.low), p_upper=float(ci.high))
    else:
        out.update(p_lower=np.nan, p_upper=np.nan)
    g = gumbel or {}
    out["p_gumbel"] = (float(stats.gumbel_r.sf(value, g["loc"], g["scale"]))
                       if np.isfinite(g.get("scale", np.nan)) else np.nan)
    return out


def fwe_verdict(value: float, lower: float, upper: float) -> str:
    """``passes`` above the interval of the FWE threshold, ``fails`` below it, else ``undecided``."""
    if value > upper:
        return "passes"
    if value < lower:
        return "fails"
    return "undecided"


def smallest_monte_carlo_p(n: int) -> float:
    """Smallest Monte-Carlo p ``(r + 1) / (n + 1)`` that ``n`` null replicates can give: ``1 / (n + 1)``."""
    return 1.0 / (int(n) + 1) if int(n) >= 0 else np.nan


def decidable(n: int, alpha: float) -> bool:
    """Whether ``n`` null replicates can reach a verdict at level ``alpha``.

    A statistic can pass the Monte-Carlo test only if ``1 / (n + 1) <= alpha``, i.e. from
    ``n >= 1 / alpha - 1`` replicates (19 for 5 %, 99 for 1 %; North et al., 2002). With fewer,
    no outcome of the simulation could make a statistic pass, so neither verdict is printed.
    """
    return int(n) >= 1 and smallest_monte_carlo_p(n) <= float(alpha) * (1 + 1e-12)


def monte_carlo_verdict(ex: dict, alpha: float) -> str:
    """Verdict of the Monte-Carlo FWE test of one statistic (:func:`exceedance` output).

    ``undecided`` whenever the ``n`` replicates cannot reach a verdict (:func:`decidable`:
    ``1 / (n + 1) > alpha``); otherwise ``passes`` when ``(r + 1) / (n + 1) <= alpha``, an exact
    level-``alpha`` test (Barnard, 1963; North et al., 2002); ``fails`` when even the lower end
    of the Clopper-Pearson interval of ``P(max >= value)`` exceeds ``alpha`` (more replicates
    would not make it pass); ``undecided`` otherwise.
    """
    if not decidable(ex["n"], alpha):
        return "undecided"
    if ex["p_monte_carlo"] <= alpha * (1 + 1e-12):
        return "passes"
    if ex["p_lower"] > alpha:
        return "fails"
    return "undecided"


def verdict_text(verdict: str, n: int) -> str:
    """A verdict as printed: ``passes``, ``fails`` or ``undecided at n replicates``."""
    return f"undecided at {int(n)} replicates" if verdict == "undecided" else verdict


# ---------------------------------------------------------------------------------------------
# sensitivity


def match_locations(clusters, space, locations: pd.DataFrame, radius: float,
                    maps: dict | None = None, fwe_z: dict | None = None) -> pd.DataFrame:
    """Per location: the nearest cluster peak of the same direction, if within ``radius`` mm.

    Parameters
    ----------
    clusters : ClusterResult
        :func:`analysis.sdm.inference.clusters.threshold_clusters` output (cluster peaks with ``voxel``;
        ``labels`` over the voxels).
    space : MaskSpace
        Its voxel space.
    locations : DataFrame
        ``direction, x, y, z`` (e.g. the published Table 3).
    radius : float
        Largest distance (mm) of a match.
    maps : dict, optional
        Maps read at the matched peak (``g`` gives ``hedges_g``).
    fwe_z : dict, optional
        ``{direction: SDM-Z threshold}``; a match is ``detected_fwe`` when its ``|SDM-Z|``
        exceeds its direction's threshold.

    Returns
    -------
    DataFrame
        One row per location: ``detected`` (a same-direction cluster peak within ``radius``),
        ``detected_fwe``, ``covered`` (the location's voxel lies in a same-direction cluster,
        wherever its peak), ``distance_mm`` (nearest same-direction cluster peak, NaN when
        none), ``sdm_z``, ``hedges_g``, ``cluster_voxels`` (NaN unless detected).
    """
    table = clusters.peaks()
    labels = np.asarray(clusters.labels)
    direction_of = dict(zip(table["cluster"].astype(int), table["direction"]))
    vox = space.voxel_index(locations[["x", "y", "z"]].to_numpy(float))
    rows = []
    for i, loc in enumerate(locations.itertuples(index=False)):
        cand = table[table["direction"] == loc.direction]
        lab = int(labels[vox[i]]) if vox[i] >= 0 else 0
        row = {"detected": False, "detected_fwe": False,
               "covered": bool(lab > 0 and direction_of.get(lab) == loc.direction),
               "distance_mm": np.nan, "sdm_z": np.nan, "hedges_g": np.nan,
               "cluster_voxels": np.nan}
        if len(cand):
            d = np.linalg.norm(cand[["x", "y", "z"]].to_numpy(float)
                               - np.array([loc.x, loc.y, loc.z], float), axis=1)
            j = int(np.argmin(d))
            row["distance_mm"] = float(d[j])
            if d[j] <= radius + 1e-9:
                pk = cand.iloc[j]
                z = float(pk["sdm_z"])
                row.update(detected=True, sdm_z=z, cluster_voxels=int(pk["cluster_voxels"]))
                if maps is not None and "g" in maps:
                    row["hedges_g"] = float(np.asarray(maps["g"])[int(pk["voxel"])])
                if fwe_z is not None and np.isfinite(fwe_z.get(loc.direction, np.nan)):
                    row["detected_fwe"] = bool(abs(z) > fwe_z[loc.direction])
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_sensitivity(rows: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Detection rates and reported effects per location and true effect size.

    Parameters
    ----------
    rows : DataFrame
        :data:`SENSITIVITY_COLUMNS` (one row per replicate, effect size and location).
    confidence : float
        Coverage of the Clopper-Pearson intervals and of the central range of the reported
        g and SDM-Z among detections.

    Returns
    -------
    DataFrame
        ``location, direction, effect_size, n``; ``detected``, ``p_detect`` and its interval
        ``p_detect_lower``, ``p_detect_upper``; the same with suffix ``_fwe`` (detections at
        the FWE threshold) and ``_covered`` (location inside a same-sign cluster);
        ``g_mean, g_lower, g_upper, z_mean, z_lower, z_upper`` (over detections; NaN without
        any) and ``distance_median`` (nearest same-sign cluster peak, over replicates that
        have one).
    """
    a = 1.0 - float(confidence)
    out = []
    for (loc, eff), grp in rows.groupby(["location", "effect_size"], sort=True):
        n = len(grp)
        det = grp[grp["detected"].astype(bool)]
        r = {"location": int(loc), "direction": grp["direction"].iloc[0],
             "effect_size": float(eff), "n": n}
        for name, k in (("", len(det)), ("_fwe", int(grp["detected_fwe"].astype(bool).sum())),
                        ("_covered", int(grp["covered"].astype(bool).sum()))):
            ci = stats.binomtest(int(k), n).proportion_ci(confidence, method="exact")
            r.update({f"detected{name}": int(k), f"p_detect{name}": k / n,
                      f"p_detect{name}_lower": float(ci.low),
                      f"p_detect{name}_upper": float(ci.high)})
        for col, key in (("hedges_g", "g"), ("sdm_z", "z")):
            v = det[col].to_numpy(dtype=float)
            if len(v):
                lo, hi = np.quantile(v, [a / 2.0, 1.0 - a / 2.0])
                r.update({f"{key}_mean": float(v.mean()), f"{key}_lower": float(lo),
                          f"{key}_upper": float(hi)})
            else:
                r.update({f"{key}_mean": np.nan, f"{key}_lower": np.nan,
                          f"{key}_upper": np.nan})
        dist = grp["distance_mm"].to_numpy(dtype=float)
        r["distance_median"] = float(np.nanmedian(dist)) if np.isfinite(dist).any() else np.nan
        out.append(r)
    return pd.DataFrame(out)


def compatible_effects(summary: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Which simulated true effects could have produced each published cluster.

    A true effect size is compatible with published cluster ``i`` when the pipeline detects it
    at least once and the published g and SDM-Z both lie within the central range of the g and
    SDM-Z it reports on detection (``g_lower..g_upper``, ``z_lower..z_upper`` of
    :func:`summarise_sensitivity`).

    Parameters
    ----------
    summary : DataFrame
        :func:`summarise_sensitivity` output.
    published : DataFrame
        Numeric Table 3 (``hedges_g``, ``sdm_z``), row ``i - 1`` for location ``i``.

    Returns
    -------
    DataFrame
        ``summary``'s rows with ``published_g``, ``published_z``, ``g_compatible``,
        ``z_compatible`` and ``compatible``.
    """
    pub = published.reset_index(drop=True)
    s = summary.copy()
    g = pub["hedges_g"].astype(float).to_numpy()[s["location"].to_numpy() - 1]
    z = pub["sdm_z"].astype(float).to_numpy()[s["location"].to_numpy() - 1]
    s["published_g"], s["published_z"] = g, z
    s["g_compatible"] = (s["detected"] > 0) & (s["g_lower"] <= g) & (g <= s["g_upper"])
    s["z_compatible"] = (s["detected"] > 0) & (s["z_lower"] <= z) & (z <= s["z_upper"])
    s["compatible"] = s["g_compatible"] & s["z_compatible"]
    return s


# ---------------------------------------------------------------------------------------------
# the permutation null of the data (stage robustness)


def read_permutation_maxima(path: str | Path) -> pd.DataFrame:
    """The PSI permutation maxima of stage ``robustness`` (row 1 = the unpermuted data).

    Raises
    ------
    DataError
        Missing file or column, or a value that is not a number (file, row, field named).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found (stage robustness writes it)")
    df = pd.read_csv(path, sep="\t")
    for col in PERMUTATION_COLUMNS:
        if col not in df.columns:
            raise DataError(path, f"required column is missing (have {list(df.columns)})",
                            row=0, field=col)
        v = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(v.to_numpy(dtype=float)))
        if len(bad):
            raise DataError(path, f"not a number: {df[col].iloc[bad[0]]!r}",
                            row=int(bad[0]) + 1, field=col)
        df[col] = v.astype(float)
    return df
