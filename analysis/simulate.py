"""Simulated group-difference t-maps and the peaks an SPM-style report would list.

Only the peaks of Moriguchi et al. (2007) are available offline; the peaks of the other ten
studies of He et al. (2024) cannot be obtained and are **never** presented as real. Generator
version 2 (this module) replaces them by clearly labelled *simulated stand-ins*: for each such
study a group-difference
t-map is simulated on the 2 mm MNI grid with that study's real sample sizes, thresholded as the
study was (its ``t_thr``) and reduced to local maxima as SPM lists them, keeping only the
direction(s) the study reported (Table 2 of the paper). Every such row carries the provenance
``simulated:v<generator_version>:seed=<seed>``.

The same machinery gives a general simulator for validation and power studies of the engine
(:func:`simulate_meta_dataset`), in the spirit of ``nimare.generate.create_coordinate_dataset``
(Salo et al., 2023), but simulating whole-brain statistic maps rather than drawing foci.

Model, per study ``s`` with ``n1`` patients and ``n2`` controls (``df = n1 + n2 - 2``):

* noise: white Gaussian noise smoothed with an isotropic Gaussian of FWHM
  ``simulation.smoothness_fwhm_mm``, re-standardised to zero mean and unit variance inside the
  brain mask, then mapped to Student's t with ``df`` degrees of freedom by equal tail
  probability (so thresholds have their nominal voxel-wise false-positive rate);
* signal: planted effects ``k`` with centre ``c_k`` (MNI mm) and Hedges' g ``g_k``; the study's
  true effect is ``g_sk = g_k + tau * e_sk`` with ``e_sk ~ N(0, 1)`` and ``tau`` the between-study
  SD ``simulation.heterogeneity_tau``; its spatial profile is a Gaussian of FWHM
  ``simulation.effect_fwhm_mm``; it is put on the t scale with
  ``t = g / (J(df) * sqrt(1/n1 + 1/n2))`` (Hedges & Olkin, 1985;
  :func:`~analysis.sdm.statistics.effect_sizes.t_from_g`) and added to the noise (a normal approximation
  of the non-central t).

Reporting, per study: supra-threshold voxels in each reported direction form clusters
(``simulation.cluster_connectivity``, at least ``simulation.cluster_extent_voxels`` voxels); up
to ``simulation.local_max_per_cluster`` local maxima per cluster, at least
``simulation.local_max_min_distance_mm`` apart, are listed by height, and at most
``simulation.max_peaks_per_study`` peaks are kept (SPM's results table).

Number of stand-ins (:func:`standin_quotas`, generator version 2): the paper reports 143 peaks
in all (Results l. 220) but no per-study counts (neither Table 2 nor ``studies.tsv`` has
them). The real study keeps its 27 peaks and the stand-ins make up the other 116: each
reported direction of each stand-in study (a peak table of its own; 15 in the ten studies)
gets an equal share, a study at most ``simulation.max_peaks_per_study``, a direction never more
than its simulated map lists above the study's threshold; what one cannot take goes to the
others (largest-remainder apportionment, ties to the larger study and the direction printed
first). With the configured seed this gives 15 peaks to each of the five studies reporting
both directions (8 + 7, Fujino 2014 10 + 5), 10 to Fan 2013 and Xu 2020, 9 to Decety 2009,
9 to Vistoli 2017 and 3 to Bird 2010 (the last two: all that their maps list).

The default true effects of the stand-ins are the four published Table 3 effects
(``published_table3.tsv``, He et al. 2024). They are small (|g| about 0.4-0.5, i.e. t about 1-2
at the centre for these sample sizes), so most stand-in peaks are maxima of the noise, as in
underpowered real studies; the simulated stand-ins are therefore *not* expected to reproduce
Table 3 (with the configured seed their main analysis finds no cluster). They are the world of
the design checks (:mod:`analysis.checks.design_simulation`). The compendium's default data are the
*constructed* stand-ins of generator version 3 (:mod:`analysis.standins`), built on this
version's listing so that the main analysis reproduces Table 3 by construction;
:func:`regenerate_peaks` writes either (``simulation.generator_version``).

References
----------
He, J. et al. (2024). Neural basis of pain empathy dysregulations in mental disorders: a
pre-registered neuroimaging meta-analysis.
Hedges, L. V. & Olkin, I. (1985). Statistical methods for meta-analysis. Academic Press.
Salo, T. et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research Environment. Aperture
Neuro 3.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from analysis.sdm.inputs.peaks import PEAK_COLUMNS
from analysis.sdm.maps.space import VOXEL_MM, connectivity_structure
from analysis.sdm.progress import progress
from analysis.sdm.rng import derive_rng
from analysis.sdm.statistics.effect_sizes import t_from_g
from analysis.sdm.statistics.hedges import degrees_of_freedom

LGR = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))
SIMULATED_PREFIX = "simulated:"
STANDIN_NOTE = "simulated stand-in, not the study's data"


# ---------------------------------------------------------------------------------------------
# grid helpers


@lru_cache(maxsize=1)
def _mask_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask (bool grid), its voxel indices (n x 3) and their MNI coordinates (n x 3)."""
    from analysis.sdm.maps.space import brain_mask, ijk_to_mni

    img = brain_mask()
    mask = np.asarray(img.dataobj) > 0
    ijk = np.argwhere(mask)
    xyz = ijk_to_mni(ijk, img.affine)
    mask.setflags(write=False)
    ijk.setflags(write=False)
    xyz.setflags(write=False)
    return mask, ijk, xyz


def _require(cfg) -> None:
    if not isinstance(cfg, dict):
        raise TypeError("the simulator needs the configuration (analysis.config.load_config())")


#: Generator version of the simulated stand-ins of :func:`simulate_standins`.
SIMULATED_VERSION = "2"
#: Generator versions :func:`regenerate_peaks` can write (``simulation.generator_version``):
#: "2" simulated (:func:`simulate_standins`), "3" constructed
#: (:func:`analysis.standins.construct_standins`).
GENERATOR_VERSIONS = ("2", "3")


def provenance_label(seed: int, cfg: dict, version: str | None = None) -> str:
    """Provenance of simulated rows: ``simulated:v<version>:seed=<seed>``.

    ``version`` defaults to the configuration's ``simulation.generator_version``.
    """
    _require(cfg)
    version = cfg["simulation"]["generator_version"] if version is None else version
    return f"{SIMULATED_PREFIX}v{version}:seed={int(seed)}"




def is_simulated(provenance: pd.Series | Iterable[str]) -> np.ndarray:
    """Whether each provenance string marks a simulated row."""
    return np.array([str(p).startswith(SIMULATED_PREFIX) for p in provenance], dtype=bool)


# ---------------------------------------------------------------------------------------------
# maps


def smooth_noise(rng: np.random.Generator, fwhm_mm: float, mask: np.ndarray | None = None,
                 voxel_mm: float | None = None) -> np.ndarray:
    """Smooth Gaussian noise with unit variance inside the mask.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the white noise.
    fwhm_mm : float
        Isotropic full width at half maximum of the smoothing kernel.
    mask : ndarray of bool, optional
        Grid mask (default: the brain mask of :mod:`analysis.grid`); its shape is the grid's.
    voxel_mm : float, optional
        Voxel size (default: ``grid.voxel_mm`` of the configuration).

    Returns
    -------
    ndarray of float64
        Noise with mean 0 and SD 1 over the mask voxels (values outside the mask are kept, on the
        same scale).
    """
    mask = _mask_geometry()[0] if mask is None else np.asarray(mask, dtype=bool)
    voxel_mm = VOXEL_MM if voxel_mm is None else float(voxel_mm)
    field = rng.standard_normal(mask.shape)
    if fwhm_mm > 0:
        field = ndimage.gaussian_filter(field, fwhm_mm * FWHM_TO_SIGMA / voxel_mm, mode="reflect")
    inside = field[mask]
    return (field - inside.mean()) / inside.std()


def gaussian_to_t(z: np.ndarray, df: float) -> np.ndarray:
    """Map standard-normal values to Student's t with ``df`` by equal tail probability."""
    z = np.asarray(z, dtype=float)
    return np.sign(z) * stats.t.isf(stats.norm.sf(np.abs(z)), df)


def effect_profile(xyz: np.ndarray, centres: np.ndarray, g: np.ndarray,
                   fwhm_mm: float) -> np.ndarray:
    """Sum of isotropic Gaussian blobs with peak heights ``g`` at ``centres`` (MNI mm)."""
    xyz = np.asarray(xyz, dtype=float)
    centres = np.atleast_2d(np.asarray(centres, dtype=float)).reshape(-1, 3)
    g = np.asarray(g, dtype=float).reshape(-1)
    out = np.zeros(len(xyz))
    sigma2 = (fwhm_mm * FWHM_TO_SIGMA) ** 2
    for c, gk in zip(centres, g):  # a handful of effects; each is vectorised over voxels
        d2 = np.sum((xyz - c) ** 2, axis=1)
        out += gk * np.exp(-0.5 * d2 / sigma2)
    return out


def simulate_tmap(n1: int, n2: int | None, effects: pd.DataFrame | None,
                  rng: np.random.Generator, cfg: dict | None = None,
                  tau: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one study's group-difference t-map on the analysis grid.

    Parameters
    ----------
    n1, n2 : int
        Patients and controls (``n2=None``: a one-sample study).
    effects : DataFrame or None
        Planted effects with columns ``x, y, z`` (MNI mm) and ``g`` (Hedges' g, positive =
        patients > controls); ``None`` or empty for a null map.
    rng : numpy.random.Generator
        Random stream (the study's true effects are drawn first, then the noise).
    cfg : dict, optional
        Configuration (:func:`analysis.config.load_config`).
    tau : float, optional
        Between-study SD of the effects (default ``simulation.heterogeneity_tau``).

    Returns
    -------
    tmap : ndarray, shape of the grid
        t values inside the brain mask, 0 outside.
    true_g : ndarray
        The study's realised true Hedges' g of each planted effect.
    """
    _require(cfg)
    sim = cfg["simulation"]
    tau = float(sim["heterogeneity_tau"]) if tau is None else float(tau)
    mask, _, xyz = _mask_geometry()
    if effects is None or len(effects) == 0:
        true_g = np.zeros(0)
    else:
        base = effects["g"].to_numpy(dtype=float)
        true_g = base + tau * rng.standard_normal(len(base))
    z = smooth_noise(rng, float(sim["smoothness_fwhm_mm"]), mask, VOXEL_MM)
    df = float(degrees_of_freedom(n1, n2))
    t = gaussian_to_t(z[mask], df)
    if true_g.size:
        gmap = effect_profile(xyz, effects[["x", "y", "z"]].to_numpy(float), true_g,
                              float(sim["effect_fwhm_mm"]))
        t = t + t_from_g(gmap, n1, n2)
    tmap = np.zeros(mask.shape)
    tmap[mask] = t
    return tmap, true_g


# ---------------------------------------------------------------------------------------------
# SPM-like peak listing


def find_peaks(tmap: np.ndarray, t_thr: float, directions: Sequence[int] = (1, -1),
               cfg: dict | None = None, mask: np.ndarray | None = None,
               max_peaks: int | None = None) -> pd.DataFrame:
    """List the local maxima of a thresholded t-map as SPM's results table does.

    For each requested direction (``+1``: t > t_thr, ``-1``: t < -t_thr) the supra-threshold
    voxels are grouped into clusters (``simulation.cluster_connectivity``; clusters smaller than
    ``simulation.cluster_extent_voxels`` are dropped). Local maxima (voxels not exceeded by any
    of their 26 neighbours) are taken in decreasing height and kept when their cluster has fewer
    than ``simulation.local_max_per_cluster`` peaks and they lie at least
    ``simulation.local_max_min_distance_mm`` from every peak already kept in that direction
    (SPM lists up to 3 maxima more than 8 mm apart per cluster; Friston et al., SPM12
    ``spm_list``; here the distance rule also holds across clusters of the same direction).
    Finally at most ``max_peaks`` of the highest peaks are kept, as a published table is finite.

    Parameters
    ----------
    tmap : ndarray
        t values on the analysis grid.
    t_thr : float
        Positive threshold on |t|.
    directions : sequence of {1, -1}
        Directions the study reported.
    cfg : dict, optional
        Configuration.
    mask : ndarray of bool, optional
        Search mask (default: the brain mask).
    max_peaks : int, optional
        Keep at most this many peaks (highest |t|) over all directions (default
        ``simulation.max_peaks_per_study``; 0 = no limit).

    Returns
    -------
    DataFrame
        Columns ``sign, x, y, z, stat_value, cluster, cluster_voxels``; ``stat_value`` is the
        signed t; rows in SPM's table order (direction as requested, clusters by their
        highest peak, then decreasing |t|); clusters numbered 1, 2, ... over the table.
    """
    _require(cfg)
    sim = cfg["simulation"]
    from analysis.sdm.maps.space import grid_affine, ijk_to_mni

    mask = _mask_geometry()[0] if mask is None else np.asarray(mask, dtype=bool)
    structure = connectivity_structure(sim["cluster_connectivity"])
    min_k = int(sim["cluster_extent_voxels"])
    per_cluster = int(sim["local_max_per_cluster"])
    min_dist2 = float(sim["local_max_min_distance_mm"]) ** 2
    affine = grid_affine()
    rows = []
    for sign in directions:
        if sign not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, not {sign}")
        signed = sign * np.asarray(tmap, dtype=float)
        supra = mask & (signed > t_thr)
        labels, n_clusters = ndimage.label(supra, structure=structure)
        if n_clusters == 0:
            continue
        sizes = np.bincount(labels.ravel())
        supra &= sizes[labels] >= min_k
        vals = np.where(supra, signed, -np.inf)
        locmax = supra & (vals >= ndimage.maximum_filter(vals, size=3, mode="constant",
                                                          cval=-np.inf))
        ijk = np.argwhere(locmax)
        height = vals[locmax]
        order = np.lexsort((np.arange(len(height)), -height))  # stable by height
        ijk, height = ijk[order], height[order]
        clus = labels[tuple(ijk.T)]
        xyz = ijk_to_mni(ijk, affine)
        kept: list[int] = []
        count = np.zeros(n_clusters + 1, dtype=int)
        for i in range(len(height)):  # candidates are few (local maxima), not voxels
            if count[clus[i]] >= per_cluster:
                continue
            if kept and np.min(np.sum((xyz[kept] - xyz[i]) ** 2, axis=1)) < min_dist2:
                continue
            kept.append(i)
            count[clus[i]] += 1
        for i in kept:
            rows.append({"sign": sign, "x": int(round(xyz[i, 0])), "y": int(round(xyz[i, 1])),
                         "z": int(round(xyz[i, 2])), "stat_value": sign * float(height[i]),
                         "cluster": int(clus[i]), "cluster_voxels": int(sizes[clus[i]])})
    out = pd.DataFrame(rows, columns=["sign", "x", "y", "z", "stat_value", "cluster",
                                      "cluster_voxels"])
    max_peaks = int(sim["max_peaks_per_study"]) if max_peaks is None else int(max_peaks)
    if max_peaks > 0 and len(out) > max_peaks:
        top = np.argsort(-np.abs(out["stat_value"].to_numpy()), kind="stable")[:max_peaks]
        out = out.iloc[np.sort(top)].reset_index(drop=True)
    return _table_order(out)


def _table_order(out: pd.DataFrame) -> pd.DataFrame:
    """SPM-like table order of a peak list, clusters renumbered 1, 2, ... over the table.

    Direction as listed, then clusters by their highest peak, then height (rows are expected in
    :func:`find_peaks` order or a subset of it, which this keeps).
    """
    key = list(zip(out["sign"], out["cluster"]))
    first = {k: i for i, k in reversed(list(enumerate(key)))}
    rank = np.array([first[k] for k in key], dtype=int)
    out = out.iloc[np.lexsort((np.arange(len(out)), rank))].reset_index(drop=True)
    new_ids = {k: i for i, k in enumerate(dict.fromkeys(zip(out["sign"], out["cluster"])), 1)}
    out["cluster"] = [new_ids[k] for k in zip(out["sign"], out["cluster"])]
    return out


# ---------------------------------------------------------------------------------------------
# studies -> peaks


def reported_directions(contrasts: str) -> list[int]:
    """Directions of a ``contrasts_reported`` field (``'Patients>HC;HC>Patients'`` -> [1, -1]).

    Uses the vocabulary of :data:`analysis.sdm.inputs.studies.CONTRASTS`.
    """
    from analysis.sdm.inputs.studies import CONTRASTS

    out = set()
    for token in str(contrasts).split(";"):
        token = token.strip()
        if not token:
            continue
        if token not in CONTRASTS:
            raise ValueError(f"unknown contrast {token!r}; expected one of {sorted(CONTRASTS)}")
        out.add(CONTRASTS[token])
    return sorted(out, reverse=True)


def published_effects(data_dir=None) -> pd.DataFrame:
    """The four published Table 3 effects as planted effects (``x, y, z, g, label``).

    Read from ``published_table3.tsv`` of the data directory (MNI location and Hedges' g;
    positive = patients > controls).
    """
    from analysis import paths
    from analysis.sdm.errors import DataError

    path = (paths.data_dir() if data_dir is None else Path(data_dir)) / "published_table3.tsv"
    df = pd.read_csv(path, sep="\t")
    for col in ("x", "y", "z", "hedges_g", "aal_label"):
        if col not in df.columns:
            raise DataError(path, f"missing column {col!r}", field=col)
    for i, row in enumerate(df.itertuples(index=False), start=1):
        for col in ("x", "y", "z", "hedges_g"):
            if not np.isfinite(pd.to_numeric(getattr(row, col), errors="coerce")):
                raise DataError(path, "not a number", row=i, field=col)
    return pd.DataFrame({"x": df["x"].astype(float), "y": df["y"].astype(float),
                         "z": df["z"].astype(float), "g": df["hedges_g"].astype(float),
                         "label": df["aal_label"].astype(str)})


def simulate_study_peaks(n1: int, n2: int | None, t_thr: float, directions: Sequence[int],
                         effects: pd.DataFrame | None, rng: np.random.Generator,
                         cfg: dict | None = None, tau: float | None = None
                         ) -> tuple[pd.DataFrame, np.ndarray]:
    """Simulate one study's t-map and list its peaks (see :func:`simulate_tmap`, :func:`find_peaks`).

    Returns
    -------
    peaks : DataFrame
        As :func:`find_peaks`.
    true_g : ndarray
        The study's realised true effect at each planted effect.
    """
    _require(cfg)
    tmap, true_g = simulate_tmap(n1, n2, effects, rng, cfg, tau=tau)
    return find_peaks(tmap, float(t_thr), directions, cfg), true_g


def keep_highest(peaks: pd.DataFrame, quotas: dict) -> pd.DataFrame:
    """The highest peaks of each direction of a :func:`find_peaks` table, in SPM's table order.

    Parameters
    ----------
    peaks : DataFrame
        A :func:`find_peaks` table (``sign``, ``stat_value``, ``cluster``, ...).
    quotas : dict
        ``{sign: number of peaks}``; a direction keeps its ``quotas[sign]`` highest ``|t|``
        (all it has when it has fewer; ties keep the table's order); directions not named are
        dropped.

    Returns
    -------
    DataFrame
        The kept rows, clusters renumbered over the table (:func:`_table_order`).
    """
    keep = []
    sign = peaks["sign"].to_numpy()
    height = np.abs(peaks["stat_value"].to_numpy(dtype=float))
    for d, q in quotas.items():
        sel = np.flatnonzero(sign == d)
        order = np.argsort(-height[sel], kind="stable")
        keep.extend(sel[order[:int(q)]].tolist())
    return _table_order(peaks.iloc[np.sort(keep)].reset_index(drop=True))


def simulate_study_family(n1: int, n2: int | None, t_thr: float, quotas: dict,
                          rng: np.random.Generator, cfg: dict | None = None,
                          effects: pd.DataFrame | None = None, scales: Sequence[float] = (1.0,),
                          tau: float | None = None) -> tuple[list[pd.DataFrame], np.ndarray]:
    """One simulated study, listed as published, for several strengths of the same effects.

    The study's map is :func:`simulate_tmap`'s model with one realisation of the noise and of
    the study's deviation from the mean effect (``tau e``, drawn first, then the noise, as
    :func:`simulate_tmap` does) shared by every scale ``c``: the true effects are
    ``c g_k + tau e_k``. Common random numbers make the curves of a power analysis over ``c``
    smooth and monotone in expectation (Morris et al., 2019); with ``scales=(1.0,)`` the map is
    exactly :func:`simulate_tmap`'s. Each direction of ``quotas`` then lists its highest local
    maxima (:func:`find_peaks` without the per-study cap, :func:`keep_highest`), as the
    stand-ins of :func:`simulate_standins` do.

    Without effects (a null study) the map is thresholded on the Gaussian scale: ``t`` is a
    monotone odd function of the smooth noise ``z`` (:func:`gaussian_to_t`), so
    ``|t| > t_thr`` exactly when ``|z| > Phi^-1(1 - F_df(-t_thr))`` and the local maxima,
    clusters and their order are the same; only the listed peaks are converted to ``t``
    (about a third of the time of a study).

    Parameters
    ----------
    n1, n2 : int
        Group sizes (``n2=None``: one-sample).
    t_thr : float
        The study's threshold on ``|t|``.
    quotas : dict
        ``{sign: number of peaks}`` for each reported direction (+1 patients > controls).
    rng : numpy.random.Generator
        The study's random stream.
    cfg : dict
        Configuration (section ``simulation``).
    effects : DataFrame, optional
        Planted effects ``x, y, z, g`` (MNI mm, Hedges' g at scale 1).
    scales : sequence of float
        Multipliers of the effects' ``g``.
    tau : float, optional
        Between-study SD (default ``simulation.heterogeneity_tau``).

    Returns
    -------
    peaks : list of DataFrame
        One :func:`find_peaks`-style table per scale (``stat_value`` = signed t).
    true_g : ndarray, shape (len(scales), n_effects)
        The study's true effect at each planted effect and scale.

    References
    ----------
    Morris, T. P., White, I. R. & Crowther, M. J. (2019). Using simulation studies to evaluate
    statistical methods. Stat Med 38, 2074-2102.
    """
    _require(cfg)
    sim = cfg["simulation"]
    tau = float(sim["heterogeneity_tau"]) if tau is None else float(tau)
    mask, _, xyz = _mask_geometry()
    df = float(degrees_of_freedom(n1, n2))
    directions = [int(d) for d in quotas]
    has_effects = effects is not None and len(effects) > 0
    scales = [float(c) for c in scales]
    if has_effects:
        base = effects["g"].to_numpy(dtype=float)
        e = rng.standard_normal(len(base))
    z = smooth_noise(rng, float(sim["smoothness_fwhm_mm"]), mask, VOXEL_MM)
    if not has_effects:
        z_thr = float(stats.norm.isf(stats.t.sf(float(t_thr), df)))
        zmap = np.where(mask, z, 0.0)
        listed = find_peaks(zmap, z_thr, directions, cfg, max_peaks=0)
        listed = keep_highest(listed, quotas)
        listed["stat_value"] = gaussian_to_t(listed["stat_value"].to_numpy(dtype=float), df)
        return [listed.copy() for _ in scales], np.zeros((len(scales), 0))
    t0 = gaussian_to_t(z[mask], df)
    centres = effects[["x", "y", "z"]].to_numpy(float)
    out, true_g = [], []
    tmap = np.zeros(mask.shape)
    for c in scales:
        g_true = c * base + tau * e
        gmap = effect_profile(xyz, centres, g_true, float(sim["effect_fwhm_mm"]))
        tmap[mask] = t0 + t_from_g(gmap, n1, n2)
        out.append(keep_highest(find_peaks(tmap, float(t_thr), directions, cfg, max_peaks=0),
                                quotas))
        true_g.append(g_true)
    return out, np.asarray(true_g)


#: Study ``space`` (studies.tsv) -> (peak ``space`` of peaks.tsv, MNI -> that space, note).
STUDY_SPACE_OUT = {
    "MNI": ("MNI", None, ""),
    "Talairach": ("TAL", "mni2tal_lancaster", "; simulated in MNI, reported in Talairach "
                  "(Lancaster icbm_other2tal)"),
}


def _peak_rows(study: str, peaks: pd.DataFrame, provenance: str, note: str,
               study_space: str = "MNI") -> pd.DataFrame:
    """Peaks of :func:`find_peaks` as rows of the ``peaks.tsv`` schema (t rounded to 0.01).

    ``peak_id`` numbers the study's peaks from 1; ``note`` adds the cluster and its size. A
    study that reported Talairach coordinates gets its stand-ins converted from MNI with
    Lancaster's icbm_other2tal (the inverse of what :mod:`analysis.sdm.inputs.coords` applies to ``TAL``
    peaks) and rounded to whole millimetres, as a paper would print them.
    """
    from analysis.sdm.inputs import coords

    if study_space not in STUDY_SPACE_OUT:
        raise ValueError(f"{study}: unknown study space {study_space!r}; expected one of "
                         f"{sorted(STUDY_SPACE_OUT)}")
    space, func, space_note = STUDY_SPACE_OUT[study_space]
    n = len(peaks)
    xyz = peaks[["x", "y", "z"]].to_numpy(dtype=float).reshape(-1, 3)
    if func is not None and n:
        xyz = getattr(coords, func)(xyz)
    xyz = np.rint(xyz).astype(int) + 0  # + 0: no negative zero
    notes = [f"{note}; cluster {c} (k={k}){space_note}"
             for c, k in zip(peaks["cluster"].astype(int), peaks["cluster_voxels"].astype(int))]
    return pd.DataFrame({
        "study": [study] * n,
        "peak_id": np.arange(1, n + 1),
        "sign": peaks["sign"].astype(int).to_numpy(),
        "x": xyz[:, 0],
        "y": xyz[:, 1],
        "z": xyz[:, 2],
        "space": [space] * n,
        "stat_type": ["t"] * n,
        "stat_value": np.round(peaks["stat_value"].to_numpy(dtype=float), 2),
        "provenance": [provenance] * n,
        "note": notes,
    }, columns=PEAK_COLUMNS)


def _n2(value) -> int | None:
    v = pd.to_numeric(value, errors="coerce")
    return int(v) if np.isfinite(v) and v > 0 else None


def apportion(total: int, weights, capacity, priority=None) -> np.ndarray:
    """Split ``total`` whole items in proportion to ``weights``, never above ``capacity``.

    Largest-remainder (Hamilton) apportionment: each unit gets the integer part of its share
    ``total * w / sum(w)`` and the items left over go to the largest fractional parts, ties to
    the unit first in ``priority``. A unit whose allocation exceeds its capacity is fixed at its
    capacity and the rest is apportioned again over the other units (water-filling), so the
    result sums to ``total`` exactly.

    Parameters
    ----------
    total : int
        Items to distribute (>= 0).
    weights : array-like of float
        Non-negative weights; a unit of weight 0 gets nothing.
    capacity : array-like of int
        Most items each unit can take.
    priority : array-like, optional
        Sort key for ties (smaller first; default: the units' order).

    Returns
    -------
    ndarray of int

    Raises
    ------
    ValueError
        ``total`` exceeds the capacity of the units with positive weight.
    """
    w = np.asarray(weights, dtype=float)
    cap = np.asarray(capacity, dtype=np.int64)
    prio = np.arange(len(w)) if priority is None else np.asarray(priority)
    out = np.zeros(len(w), dtype=np.int64)
    free = (w > 0) & (cap > 0)
    total = int(total)
    if total < 0 or total > cap[free].sum():
        raise ValueError(f"cannot apportion {total} items over units of total capacity "
                         f"{int(cap[free].sum())}")
    remaining = total
    while remaining > 0:
        share = np.where(free, remaining * w / w[free].sum(), 0.0)
        base = np.floor(share + 1e-9).astype(np.int64)
        rem = np.round(share - base, 9)
        order = sorted(np.flatnonzero(free), key=lambda i: (-rem[i], prio[i]))
        base[order[:remaining - int(base[free].sum())]] += 1
        over = free & (base > cap)
        if not over.any():
            out[free] = base[free]
            break
        out[over] = cap[over]
        remaining -= int(cap[over].sum())
        free &= ~over
    return out


def standin_quotas(studies: pd.DataFrame, n_standins: int, available: dict,
                   cfg: dict | None = None) -> dict:
    """How many stand-in peaks each study and direction gets so that they total ``n_standins``.

    The paper gives only the total (143 peaks, Results l. 220) and each study's reported
    directions (Table 2), not per-study counts. Rule: every reported direction of every stand-in
    study is one peak table and gets an equal share of ``n_standins`` (a study reporting both
    directions counts twice); a study takes at most ``simulation.max_peaks_per_study`` peaks
    (SPM-like finite tables) and never more than its simulated map lists in a direction (peaks
    below the study's threshold are never invented); what a study or direction cannot take goes
    to the others in the same proportions (:func:`apportion`). Ties go to the larger study
    (``n1 + n2``, then the study name) and, within a study, to the direction printed first.

    Parameters
    ----------
    studies : DataFrame
        The stand-in studies: ``study, n1, n2, contrasts_reported``.
    n_standins : int
        Stand-in peaks wanted in total.
    available : dict
        ``{study: {sign: number of peaks its simulated map lists}}``.
    cfg : dict, optional
        Configuration.

    Returns
    -------
    dict
        ``{study: {sign: quota}}``.

    Raises
    ------
    ValueError
        The maps list fewer peaks than ``n_standins`` (within the per-study cap).
    """
    _require(cfg)
    cap = int(cfg["simulation"]["max_peaks_per_study"]) or 10**9
    ids = [str(r.study) for r in studies.itertuples(index=False)]
    dirs = [reported_directions(r.contrasts_reported) for r in studies.itertuples(index=False)]
    size = [int(r.n1) + (_n2(r.n2) or 0) for r in studies.itertuples(index=False)]
    room = [min(cap, sum(int(available[s].get(d, 0)) for d in ds)) for s, ds in zip(ids, dirs)]
    rank = sorted(range(len(ids)), key=lambda i: (-size[i], ids[i]))
    prio = np.empty(len(ids), dtype=np.int64)
    prio[rank] = np.arange(len(ids))
    per_study = apportion(n_standins, [len(d) for d in dirs], room, prio)
    out = {}
    for s, ds, q in zip(ids, dirs, per_study):
        split = apportion(int(q), np.ones(len(ds)), [int(available[s].get(d, 0)) for d in ds])
        out[s] = {d: int(k) for d, k in zip(ds, split)}
    return out


def standin_listing(studies: pd.DataFrame, seed: int, cfg: dict | None = None,
                    skip: Iterable[str] = (), effects: pd.DataFrame | None = None,
                    n_standins: int | None = None) -> tuple[dict, dict]:
    """The simulated maps' peak listings of the version-2 stand-ins and their counts.

    Each study not in ``skip`` gets its own random stream ``derive_rng(seed,
    "simulate-peaks/<study>")`` and its simulated map (:func:`simulate_tmap`, the planted
    ``effects``) is listed as :func:`find_peaks` does.

    Returns
    -------
    listed : dict
        ``{study: peak table}``: without ``n_standins`` the study's highest peaks up to
        ``simulation.max_peaks_per_study``; with it every local maximum the map lists (no cap).
    quotas : dict
        ``{study: {sign: count}}``: with ``n_standins`` the counts of :func:`standin_quotas`
        (over every reported direction), without it the counts of the listing.
    """
    _require(cfg)
    effects = published_effects() if effects is None else effects
    skip = set(skip)
    todo = [r for r in studies.itertuples(index=False) if r.study not in skip]
    listed = {}
    for row in progress(todo, desc="simulating stand-in studies", unit="study",
                        disable=len(todo) < 5, logger=LGR):
        rng = derive_rng(seed, f"simulate-peaks/{row.study}")
        dirs = reported_directions(row.contrasts_reported)
        if n_standins is None:
            peaks, _ = simulate_study_peaks(int(row.n1), _n2(row.n2), float(row.t_thr), dirs,
                                            effects, rng, cfg)
        else:
            tmap, _ = simulate_tmap(int(row.n1), _n2(row.n2), effects, rng, cfg)
            peaks = find_peaks(tmap, float(row.t_thr), dirs, cfg, max_peaks=0)
        listed[row.study] = peaks
    avail = {s: {int(d): int(n) for d, n in p["sign"].value_counts().items()}
             for s, p in listed.items()}
    if n_standins is not None and todo:
        quotas = standin_quotas(pd.DataFrame(todo), int(n_standins), avail, cfg)
    else:
        quotas = {str(r.study): {d: avail[r.study].get(d, 0)
                                 for d in reported_directions(r.contrasts_reported)}
                  for r in todo}
    return listed, quotas


def simulate_standins(studies: pd.DataFrame, seed: int, cfg: dict | None = None,
                      skip: Iterable[str] = (), effects: pd.DataFrame | None = None,
                      n_standins: int | None = None) -> pd.DataFrame:
    """Simulated stand-in peaks for every study of ``studies`` not in ``skip``.

    Each study gets its own random stream ``derive_rng(seed, "simulate-peaks/<study>")`` (the
    stage's seed, one stream per study), so its map does not depend on the other studies.

    Without ``n_standins`` each study lists its highest peaks up to
    ``simulation.max_peaks_per_study`` (:func:`find_peaks`). With ``n_standins`` the stand-ins
    total exactly that many: the counts per study and direction follow :func:`standin_quotas`
    (an equal share per reported direction, capped by the per-study maximum and by what the
    map lists) and each direction keeps its highest peaks. The counts then depend on the other
    stand-in studies; each study's map does not.

    Parameters
    ----------
    studies : DataFrame
        The study table (:func:`analysis.data_tables.load_studies`): ``study, n1, n2, t_thr,
        contrasts_reported`` and optionally ``space`` (``MNI`` or ``Talairach``; Talairach
        studies get ``TAL`` stand-ins).
    seed : int
        The seed (normally the configuration's ``seed``); recorded in ``provenance``.
    cfg : dict, optional
        Configuration.
    skip : iterable of str
        Studies with real peaks (not simulated).
    effects : DataFrame, optional
        Planted true effects ``x, y, z, g`` (default: :func:`published_effects`).
    n_standins : int, optional
        Total number of stand-in peaks (the paper's total minus the real peaks; see
        :func:`regenerate_peaks`).

    Returns
    -------
    DataFrame
        Peak rows in the ``peaks.tsv`` schema (:data:`PEAK_COLUMNS`), ``provenance`` =
        :func:`provenance_label`, ``note`` saying they are stand-ins.

    Raises
    ------
    ValueError
        With ``n_standins``: the simulated maps list fewer peaks than that.
    """
    _require(cfg)
    effects = published_effects() if effects is None else effects
    prov = provenance_label(seed, cfg, SIMULATED_VERSION)
    skip = set(skip)
    todo = [r for r in studies.itertuples(index=False) if r.study not in skip]
    full, quotas = standin_listing(studies, seed, cfg, skip=skip, effects=effects,
                                   n_standins=n_standins)
    listed = {s: keep_highest(p, quotas[s]) if n_standins is not None else p
              for s, p in full.items()}
    parts = []
    for row in todo:
        peaks = listed[row.study]
        LGR.debug("%s: %d simulated peaks", row.study, len(peaks))
        space = str(getattr(row, "space", "MNI") or "MNI").strip()
        parts.append(_peak_rows(row.study, peaks, prov, STANDIN_NOTE, space))
    if not parts:
        return pd.DataFrame(columns=PEAK_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def simulate_meta_dataset(n_studies: int, effects, rng: np.random.Generator,
                          n_range: Sequence[int] | None = None, tau: float | None = None,
                          null: bool = False, p_threshold: float | None = None,
                          cfg: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A whole simulated meta-analysis with known truth, for validation and power studies.

    Parameters
    ----------
    n_studies : int
        Number of studies (``sim01``, ``sim02``, ...).
    effects : DataFrame or sequence of (x, y, z, g)
        Planted effects (MNI mm, Hedges' g; positive = patients > controls).
    rng : numpy.random.Generator
        The one random stream (sample sizes, then each study's effects and noise).
    n_range : (int, int), optional
        Inclusive range of each group's size (default ``simulation.validation.n_range``).
    tau : float, optional
        Between-study SD of the effects (default ``simulation.heterogeneity_tau``).
    null : bool
        Ignore ``effects`` (all true effects zero): for false-positive rates.
    p_threshold : float, optional
        One-tailed voxel p of every study (default ``simulation.validation.p_uncorrected``);
        ``t_thr`` is the t of this p with the study's df.
    cfg : dict, optional
        Configuration.

    Returns
    -------
    studies : DataFrame
        ``study, n1, n2, df, t_thr, threshold_kind, contrasts_reported`` (both directions).
        ``studies.attrs["true_g"]`` holds each study's realised true g per effect
        (rows = studies, columns = effect index) and ``studies.attrs["effects"]`` the planted
        effects, both labelled simulated.
    peaks : DataFrame
        Peak rows in the ``peaks.tsv`` schema (all MNI, ``stat_type`` t), provenance
        ``simulated:v<version>:validation``, plus the signed ``t`` column, so that
        ``SDMDataset(studies, peaks)`` (:mod:`analysis.sdm.inputs.dataset`) takes them directly.
    """
    from analysis.sdm.inputs.coords import t_threshold

    _require(cfg)
    val = cfg["simulation"]["validation"]
    lo, hi = (val["n_range"] if n_range is None else n_range)
    p_threshold = float(val["p_uncorrected"]) if p_threshold is None else float(p_threshold)
    eff = effects if isinstance(effects, pd.DataFrame) else pd.DataFrame(
        list(effects) if effects is not None else [], columns=["x", "y", "z", "g"])
    if null:
        eff = eff.assign(g=0.0)
    names = [f"sim{i:02d}" for i in range(1, n_studies + 1)]
    n = rng.integers(int(lo), int(hi) + 1, size=(n_studies, 2))
    df = n.sum(axis=1) - 2
    t_thr = np.asarray(t_threshold(p_threshold, df), dtype=float)
    studies = pd.DataFrame({"study": names, "n1": n[:, 0], "n2": n[:, 1], "df": df,
                            "t_thr": t_thr, "threshold_kind": "uncorrected",
                            "contrasts_reported": "Patients>HC;HC>Patients"})
    prov = f"{SIMULATED_PREFIX}v{SIMULATED_VERSION}:validation"
    parts, true_g = [], []
    for row in studies.itertuples(index=False):
        peaks, tg = simulate_study_peaks(int(row.n1), int(row.n2), float(row.t_thr), (1, -1),
                                         eff, rng, cfg, tau=tau)
        true_g.append(tg)
        parts.append(_peak_rows(row.study, peaks, prov, "simulated validation study"))
    peaks = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PEAK_COLUMNS)
    peaks["t"] = peaks["stat_value"].astype(float)  # all MNI t: ready for SDMDataset
    studies.attrs["true_g"] = pd.DataFrame(np.array(true_g).reshape(n_studies, len(eff)),
                                           index=names)
    studies.attrs["effects"] = eff.reset_index(drop=True)
    return studies, peaks


# ---------------------------------------------------------------------------------------------
# data/peaks.tsv


PUBLISHED_VALUES_FILE = "published_values.tsv"


def published_peak_total(data_dir, n_studies: int) -> int | None:
    """The paper's number of peaks (``n_peaks`` of ``published_values.tsv``), if it applies.

    It applies to the paper's set of studies only: ``None`` when the file or the keys
    ``n_peaks``/``n_studies`` are absent or when ``n_studies`` differs from the file's (e.g. a
    subset of the studies).

    Raises
    ------
    DataError
        ``n_peaks`` or ``n_studies`` is not a whole number (file, row and field named).
    """
    from analysis.sdm.errors import DataError
    from analysis.sdm.inputs.io import read_tsv_text

    path = Path(data_dir) / PUBLISHED_VALUES_FILE
    if not path.exists():
        return None
    raw = read_tsv_text(path, required=["key", "value"])
    values = {}
    for row, key, value in zip(raw.index, raw["key"], raw["value"]):
        if key in ("n_peaks", "n_studies"):
            v = pd.to_numeric(value, errors="coerce")
            if not (np.isfinite(v) and float(v).is_integer() and v >= 0):
                raise DataError(path.name, f"{key} must be a whole number, got {value!r}",
                                row=int(row), field="value")
            values[key] = int(v)
    if "n_peaks" not in values or values.get("n_studies") != int(n_studies):
        return None
    return values["n_peaks"]


def regenerate_peaks(data_dir=None, seed: int | None = None, cfg: dict | None = None,
                     write: bool = False, n_peaks: int | str | None = "published",
                     version: str | None = None) -> pd.DataFrame:
    """Rebuild ``peaks.tsv``: every non-simulated row kept verbatim, simulated rows regenerated.

    Studies that have at least one non-simulated row (``original:`` or ``sdm-import:``) keep
    their peaks and are not simulated; every other study of ``studies.tsv`` gets stand-ins from
    :func:`simulate_standins`.

    Number of stand-ins: the table totals the paper's 143 peaks (Results l. 220;
    ``n_peaks`` of ``published_values.tsv``): the real rows (Moriguchi et al. 2007's 27) are
    kept and the other 116 are shared among the stand-in studies by :func:`standin_quotas` (an
    equal share per reported direction, at most ``simulation.max_peaks_per_study`` per study,
    never more than a map lists). Without a total that applies (a study table other than the
    paper's 11 studies) each study lists its highest peaks up to the per-study maximum.

    Parameters
    ----------
    data_dir : path-like, optional
        Folder with ``studies.tsv``, ``peaks.tsv`` and ``published_table3.tsv``.
    seed : int, optional
        Seed of the stand-ins (default: the configuration's ``seed``).
    cfg : dict, optional
        Configuration.
    write : bool
        Write the result with :func:`analysis.data_tables.write_peaks` (validated, atomic; nothing
        is written on any error).
    n_peaks : int, "published" or None
        Total number of peaks, real and simulated; ``"published"`` (default):
        :func:`published_peak_total`; ``None``: no total, the per-study maximum only.
    version : str, optional
        Stand-in generator (default ``simulation.generator_version``): ``"3"`` the constructed
        stand-ins of :func:`analysis.standins.construct_standins`, ``"2"`` the simulated ones
        of :func:`simulate_standins`.

    Returns
    -------
    DataFrame
        The new table in canonical text form (:func:`analysis.sdm.inputs.peaks.format_peaks`).

    Raises
    ------
    ValueError
        The real rows alone exceed the total, or the simulated maps list too few peaks.
    """
    from analysis import paths
    from analysis.data_tables import PEAKS_FILE, load_studies, write_peaks
    from analysis.sdm.inputs.io import read_tsv_text
    from analysis.sdm.inputs.peaks import format_peaks

    _require(cfg)
    seed = int(cfg["seed"] if seed is None else seed)
    ddir = paths.data_dir() if data_dir is None else Path(data_dir)
    studies = load_studies(ddir, corrected_voxel_p=float(cfg["data"]["corrected_voxel_p"]))
    path = ddir / PEAKS_FILE
    if path.exists():
        current = read_tsv_text(path, required=PEAK_COLUMNS).reset_index(drop=True)
        current = current[~is_simulated(current["provenance"].str.strip())]
    else:
        current = pd.DataFrame(columns=PEAK_COLUMNS)
    real = set(current["study"].str.strip())
    if isinstance(n_peaks, str):
        if n_peaks != "published":
            raise ValueError(f"n_peaks must be a number, 'published' or None, not {n_peaks!r}")
        n_peaks = published_peak_total(ddir, len(studies))
    n_standins = None
    if n_peaks is not None:
        n_standins = int(n_peaks) - len(current)
        if n_standins < 0:
            raise ValueError(f"{PEAKS_FILE} has {len(current)} non-simulated peaks, more than "
                             f"the total of {n_peaks}")
        LGR.info("stand-ins: %d peaks (total %d minus %d real)", n_standins, n_peaks,
                 len(current))
    version = str(cfg["simulation"]["generator_version"] if version is None else version)
    if version == "3":
        from analysis.standins import construct_standins

        sim = construct_standins(studies, seed, cfg, skip=real, effects=published_effects(ddir),
                                 n_standins=n_standins)
    elif version == SIMULATED_VERSION:
        sim = simulate_standins(studies, seed, cfg, skip=real,
                                effects=published_effects(ddir), n_standins=n_standins)
    else:
        raise ValueError(f"unknown stand-in generator version {version!r}; expected one of "
                         f"{list(GENERATOR_VERSIONS)}")
    merged = format_peaks(pd.concat([current[PEAK_COLUMNS], sim], ignore_index=True))
    if write:
        write_peaks(merged, ddir, studies=studies,
                    mask_tolerance_mm=float(cfg["data"]["mask_tolerance_mm"]),
                    t_tolerance=float(cfg["data"]["t_below_threshold_tolerance"]))
    return merged


def summarise_peaks(peaks: pd.DataFrame, studies: pd.DataFrame) -> pd.DataFrame:
    """Per-study counts: ``study, n1, n2, t_thr, contrasts_reported, kind, n_pos, n_neg, n``.

    ``kind`` is ``simulated``, ``real`` or ``none`` (no peaks).
    """
    sign = pd.to_numeric(peaks["sign"])
    sim = is_simulated(peaks["provenance"])
    rows = []
    for r in studies.itertuples(index=False):
        sel = (peaks["study"] == r.study).to_numpy()
        kind = "none" if not sel.any() else ("simulated" if sim[sel].all() else "real")
        rows.append({"study": r.study, "n1": int(r.n1),
                     "n2": _n2(r.n2) if _n2(r.n2) is not None else "",
                     "t_thr": round(float(r.t_thr), 3), "contrasts_reported": r.contrasts_reported,
                     "kind": kind, "n_pos": int((sign[sel] > 0).sum()),
                     "n_neg": int((sign[sel] < 0).sum()), "n": int(sel.sum())})
    return pd.DataFrame(rows)
