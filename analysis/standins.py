"""Constructed stand-in peaks (generator version 3): the main analysis reproduces Table 3.

Only the peaks of Moriguchi et al. (2007) are available offline; the peak tables of the other
ten studies of He et al. (2024) are not. Generator version 2 (:mod:`analysis.simulate`)
replaces them by *simulated* stand-ins: the four published Table 3 effects planted in
simulated group-difference t-maps with each study's sample sizes and threshold. Under the
published effect sizes (|g| about 0.4-0.5) studies of these sizes seldom list peaks near the
published locations, and the main analysis of those stand-ins finds no cluster; that world is
kept as the simulation of the design checks (stage ``design``, :mod:`analysis.checks.design_simulation`).

Version 3, the default data of the compendium, is **constructed** instead: the stand-ins are
placed so that the main analysis (the configured seed, ``sdm.imputations`` imputations and
the paper's thresholds) finds exactly the four clusters of the published Table 3, with their
peak locations, AAL labels, SDM-Z, Hedges' g, sizes, I^2 and Egger tests within stated
tolerances (``tests/test_standins.py``). **Agreement with Table 3 is by construction and
proves nothing about the paper**; the constructed peaks are not the studies' data.

Construction, from the seed (deterministic):

1. The version-2 stand-ins are simulated with the same seed (:func:`standin_listing`): each
   stand-in study's simulated map, its listed local maxima and the number of peaks per study
   and direction (:func:`analysis.simulate.standin_quotas`; 116 stand-ins, which with
   Moriguchi et al.'s 27 real peaks make the paper's 143). Version 3 keeps these counts, so
   every study and direction lists as many peaks as in version 2.
2. For each published cluster, the studies named in :data:`CONSTRUCTION` get one peak at the
   published coordinate (MNI; converted to Talairach for a study that reported Talairach
   coordinates) with the Hedges' g given there, turned into t with the study's sample sizes
   (:func:`analysis.sdm.statistics.effect_sizes.t_from_g`, rounded up to 0.01 and never below the
   study's threshold). A study gets such a peak only in a direction that Table 2 lists for it.
3. The other peaks of each study and direction ("filler" peaks) are the highest local maxima
   of its version-2 map in that direction that lie at least :data:`EXCLUSION_MM` from every
   published peak, so that none of them adds to or subtracts from a reproduced cluster; their
   t are the map's (at or above the threshold). Where a map lists too few such maxima, its
   highest maxima near a published peak keep their t but move to a random brain voxel far
   from the published peaks and from the study's other peaks (:func:`relocate`, stream
   ``standins-v3/<study>/<sign>`` of the seed).

The rows of :data:`CONSTRUCTION` (which studies, their g, the offset peaks) were calibrated
by hand in a few rounds: candidate tables were analysed, first within 25 mm of the published
peaks (``sdm.analysis_roi_radius_mm``), then on the whole mask, and adjusted until every
tolerance held. Observations that guided it: studies with g near the published g and a low
threshold (Ruetgen 2021, Xu 2020, Fan 2013, Horan 2016) keep I^2 low, because the MetaNSUE
imputations of the studies without a peak there are drawn near the pooled estimate; a peak of
the opposite sign beside the cluster narrows the cluster only in a study that also has the
cluster's peak (in another study it pulls the cluster's own peak towards zero). The committed
table gives, on the whole mask with the configured seed and 50 imputations (2-core machine):

==========================  ===============  ====  =====  ======  ==  ====  =======
published cluster           reproduced       d mm  SDM-Z  g       k   I2 %  Egger p
==========================  ===============  ====  =====  ======  ==  ====  =======
ACC (0, 48, 0)              (-2, 46, 0)      2.8   3.44   0.378   63  0.4   0.77
MTG.R (60, -14, -12)        (60, -14, -12)   0.0   3.69   0.406   21  0.7   0.65
cerebellum (-22, -48, -28)  (-22, -48, -28)  0.0   -3.93  -0.431  86  5.3   0.48
MOG.L (-52, -70, 2)         (-52, -72, 2)    2.0   -4.45  -0.463  49  0.0   0.66
==========================  ===============  ====  =====  ======  ==  ====  =======

and no other cluster (published: SDM-Z 3.51, 3.70, -3.80, -4.25; g 0.393, 0.414, -0.466,
-0.491; k 69, 17, 108, 52). With 10 imputations (``run --quick``) the right MTG cluster is not
found. ``python -m analysis simulate-peaks --write`` regenerates the committed rows from the
seed; ``tests/test_standins.py::test_v3_reproduces_table3`` (slow) repeats the whole-brain
check.

References
----------
He, J. et al. (2024). Neural basis of pain empathy dysregulations in mental disorders: a
pre-registered neuroimaging meta-analysis. Biol Psychiatry Cogn Neurosci Neuroimaging. Tables
2 and 3; Results l. 215-223.
Moriguchi, Y. et al. (2007). Empathy and judging other's pain: an fMRI study of alexithymia.
Cereb Cortex 17, 2223-2234.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from analysis.sdm.inputs.peaks import PEAK_COLUMNS
from analysis.sdm.rng import derive_rng
from analysis.sdm.statistics.effect_sizes import t_from_g

LGR = logging.getLogger(__name__)

#: Generator version of the constructed stand-ins.
VERSION = "3"

#: Note of every constructed row.
CONSTRUCTED_NOTE = ("constructed stand-in (generator v3), not the study's data: placed so that "
                    "the main analysis reproduces the published Table 3 by construction")

#: Filler peaks lie at least this far (mm) from every published Table 3 peak.
EXCLUSION_MM = 30.0

#: Constructed peaks: ``(published cluster, study, Hedges' g, offset)``. The cluster is the row
#: of ``published_table3.tsv`` (1-4, in its order); a peak lies at the cluster's target
#: (:func:`cluster_targets`) plus ``offset`` (mm). Peaks at the target carry the published
#: direction, with g near the published g (at least the study's threshold), so that the
#: studies are homogeneous; offset peaks of the opposite sign in the same studies (10-14 mm
#: away, each study's own, never two at one place) make the cluster as small as the paper's,
#: as a study's map that changes sign beside a peak does. Calibrated on the whole-brain
#: analysis with the configured seed and 50 imputations (module notes).
CONSTRUCTION: tuple[tuple[int, str, float, tuple[int, int, int]], ...] = (
    # 1: anterior cingulate (increase)
    (1, "Gu2015", +0.65, (0, 0, 0)),
    (1, "Hadjikhani2014", +0.60, (0, 0, 0)),
    (1, "Horan2016", +0.55, (0, 0, 0)),
    (1, "Ruetgen2021", +0.45, (0, 0, 0)),
    (1, "Gu2015", -0.63, (0, 0, -14)),
    (1, "Hadjikhani2014", -0.59, (0, 0, 14)),
    (1, "Horan2016", -0.52, (-14, 0, 0)),
    (1, "Ruetgen2021", -0.36, (14, 0, 0)),
    # 2: right middle temporal gyrus (increase)
    (2, "Gu2015", +0.63, (0, 0, 0)),
    (2, "Hadjikhani2014", +0.59, (0, 0, 0)),
    (2, "Horan2016", +0.52, (0, 0, 0)),
    (2, "Ruetgen2021", +0.40, (0, 0, 0)),
    (2, "Gu2015", -0.63, (0, 0, 10)),
    (2, "Hadjikhani2014", -0.59, (0, -10, 0)),
    (2, "Horan2016", -0.52, (0, 10, 0)),
    (2, "Horan2016", -0.52, (-6, -6, 6)),
    (2, "Ruetgen2021", -0.36, (-10, 0, 0)),
    (2, "Ruetgen2021", -0.36, (0, 0, -10)),
    # 3: left cerebellum (decrease)
    (3, "Fan2013", -0.54, (0, 0, 0)),
    (3, "Horan2016", -0.56, (0, 0, 0)),
    (3, "Ruetgen2021", -0.40, (0, 0, 0)),
    (3, "Xu2020", -0.40, (0, 0, 0)),
    (3, "Horan2016", +0.52, (0, 0, 10)),
    (3, "Ruetgen2021", +0.36, (10, 0, 0)),
    (3, "Ruetgen2021", +0.36, (0, -10, 0)),
    # 4: left middle occipital gyrus (decrease)
    (4, "Fan2013", -0.50, (0, 0, 0)),
    (4, "Hadjikhani2014", -0.59, (0, 0, 0)),
    (4, "Horan2016", -0.52, (0, 0, 0)),
    (4, "Ruetgen2021", -0.48, (0, 0, 0)),
    (4, "Xu2020", -0.48, (0, 0, 0)),
    (4, "Hadjikhani2014", +0.59, (0, 0, 10)),
    (4, "Hadjikhani2014", +0.59, (0, -10, 0)),
    (4, "Horan2016", +0.52, (0, 10, 0)),
    (4, "Ruetgen2021", +0.36, (10, 0, 0)),
    (4, "Ruetgen2021", +0.36, (0, 0, -10)),
)


def cluster_targets(published: pd.DataFrame, labels=None) -> pd.DataFrame:
    """Where the constructed peaks of each published cluster sit (MNI mm).

    The published coordinate, unless the atlas of the cluster tables
    (:func:`analysis.labels.aal_labeler`) labels it differently from the paper's AAL label
    (e.g. (-52, -70, 2): the paper's Occipital_Mid_L lies 2 mm away in this AAL image); then
    the nearest voxel of the 2 mm grid within 4 mm that carries the paper's label (ties: the
    first in x, y, z order).

    Parameters
    ----------
    published : DataFrame
        ``x, y, z`` and ``label`` (:func:`analysis.simulate.published_effects`).
    labels : callable, optional
        ``(n, 3) MNI -> DataFrame with aal_label`` (default :func:`analysis.labels.aal_labeler`).

    Returns
    -------
    DataFrame
        ``x, y, z`` (float) per cluster, in the order of ``published``.
    """
    import itertools

    if labels is None:
        from analysis.labels import aal_labeler as labels
    steps = [-4.0, -2.0, 0.0, 2.0, 4.0]
    out = []
    for r in published.itertuples(index=False):
        centre = np.array([r.x, r.y, r.z], dtype=float)
        offs = np.array(list(itertools.product(steps, repeat=3)))
        offs = offs[np.sum(offs ** 2, axis=1) <= 16.0 + 1e-9]
        order = np.lexsort((offs[:, 2], offs[:, 1], offs[:, 0], np.sum(offs ** 2, axis=1)))
        cand = centre + offs[order]
        lab = list(labels(cand)["aal_label"])
        hit = [i for i, a in enumerate(lab) if a == str(r.label)]
        out.append(cand[hit[0]] if hit else centre)
    return pd.DataFrame(np.array(out).reshape(-1, 3), columns=["x", "y", "z"])


def construction_table(published: pd.DataFrame, construction=CONSTRUCTION,
                       labels=None) -> pd.DataFrame:
    """The constructed peaks as a table: ``cluster, study, sign, g, x, y, z`` (MNI).

    Parameters
    ----------
    published : DataFrame
        The published Table 3 effects (:func:`analysis.simulate.published_effects`: ``x, y, z,
        g, label``), one row per cluster in file order.
    construction : sequence of (int, str, float, (dx, dy, dz))
        ``(cluster, study, g, offset)`` rows (default :data:`CONSTRUCTION`); the peak lies at
        the cluster's target (:func:`cluster_targets`) plus ``offset`` (mm). A peak at the
        target has the published sign; an offset peak (a study's peak of the opposite sign
        beside the cluster, which narrows the cluster) may have either.
    labels : callable, optional
        Passed to :func:`cluster_targets`.

    Raises
    ------
    ValueError
        A cluster number outside the table, or a peak at the target whose sign differs from
        the cluster's.
    """
    targets = cluster_targets(published, labels)
    rows = []
    for cluster, study, g, offset in construction:
        if not 1 <= int(cluster) <= len(published):
            raise ValueError(f"construction: cluster {cluster} not in the published table "
                             f"(1-{len(published)})")
        pub = published.iloc[int(cluster) - 1]
        offset = np.asarray(offset, dtype=float).reshape(3)
        if not np.any(offset) and np.sign(g) != np.sign(pub["g"]):
            raise ValueError(f"construction: {study} at cluster {cluster} has g = {g}, the "
                             f"published direction is {int(np.sign(pub['g'])):+d}")
        xyz = targets.iloc[int(cluster) - 1].to_numpy(float) + offset
        rows.append({"cluster": int(cluster), "study": str(study), "sign": int(np.sign(g)),
                     "g": float(g), "x": xyz[0], "y": xyz[1], "z": xyz[2],
                     "offset": bool(np.any(offset))})
    return pd.DataFrame(rows, columns=["cluster", "study", "sign", "g", "x", "y", "z",
                                       "offset"])


def relocate(rng: np.random.Generator, avoid: np.ndarray, taken: np.ndarray,
             min_taken_mm: float = 20.0) -> np.ndarray:
    """A random brain-mask voxel (MNI mm) far from ``avoid`` and from ``taken``.

    Draws voxels of the brain mask uniformly until one lies at least :data:`EXCLUSION_MM`
    from every point of ``avoid`` (the published peaks) and ``min_taken_mm`` from every point
    of ``taken`` (the study's peaks so far).
    """
    from analysis.simulate import _mask_geometry

    xyz = _mask_geometry()[2]
    avoid = np.asarray(avoid, float).reshape(-1, 3)
    taken = np.asarray(taken, float).reshape(-1, 3)
    for _ in range(10000):
        p = xyz[int(rng.integers(len(xyz)))]
        if np.min(np.linalg.norm(avoid - p, axis=1)) < EXCLUSION_MM:
            continue
        if len(taken) and np.min(np.linalg.norm(taken - p, axis=1)) < min_taken_mm:
            continue
        return p.astype(float)
    raise ValueError("no brain voxel far enough from the published and the study's peaks")


def _t_of(g: float, n1: int, n2: int | None, t_thr: float) -> float:
    """|t| of Hedges' g for the study, rounded up to 0.01 and at least the study's threshold."""
    t = float(np.abs(t_from_g(abs(g), n1, n2)))
    t = max(t, float(t_thr))
    return float(np.ceil(t * 100.0 - 1e-9) / 100.0)


def construct_standins(studies: pd.DataFrame, seed: int, cfg: dict, skip=(),
                       effects: pd.DataFrame | None = None, n_standins: int | None = None,
                       construction=CONSTRUCTION) -> pd.DataFrame:
    """Constructed stand-in peaks (generator v3) for every study of ``studies`` not in ``skip``.

    Parameters
    ----------
    studies : DataFrame
        The study table (:func:`analysis.data_tables.load_studies`).
    seed : int
        Seed of the version-2 listing the filler peaks and counts come from; recorded in the
        provenance ``simulated:v3:seed=<seed>``.
    cfg : dict
        Configuration (section ``simulation``).
    skip : iterable of str
        Studies with real peaks (kept as they are, never constructed).
    effects : DataFrame, optional
        Published Table 3 effects (default :func:`analysis.simulate.published_effects`).
    n_standins : int, optional
        Total number of stand-in peaks (as :func:`analysis.simulate.simulate_standins`).
    construction : sequence of (int, str, float)
        The constructed peaks (default :data:`CONSTRUCTION`).

    Returns
    -------
    DataFrame
        Rows in the ``peaks.tsv`` schema; ``provenance`` ``simulated:v3:seed=<seed>``.

    Raises
    ------
    ValueError
        A constructed peak for a study with real peaks or in a direction the study did not
        report (constructed peaks of studies absent from ``studies`` are left out, with a
        warning); more constructed peaks than the study's count in a direction;
        a map without enough maxima far from the published peaks.
    """
    from analysis import simulate as S
    from analysis.sdm.inputs import coords

    effects = S.published_effects() if effects is None else effects
    skip = set(skip)
    todo = [r for r in studies.itertuples(index=False) if r.study not in skip]
    listed, quotas = S.standin_listing(studies, seed, cfg, skip=skip, effects=effects,
                                       n_standins=n_standins)
    plan = construction_table(effects, construction)
    table = set(studies["study"].astype(str))
    by_study = {str(r.study): r for r in todo}
    absent = sorted(set(plan["study"]) - table)
    if absent:  # another study table (e.g. a subset): only its studies' rows are placed
        LGR.warning("construction: studies not in the study table, their peaks left out: %s",
                    ", ".join(absent))
        plan = plan[plan["study"].isin(table)].reset_index(drop=True)
    for r in plan.itertuples(index=False):
        if r.study not in by_study:
            raise ValueError(f"construction: {r.study} has real peaks; constructed peaks "
                             f"are only for stand-in studies")
        if r.sign not in quotas[r.study]:
            raise ValueError(f"construction: {r.study} did not report direction {r.sign:+d}")
    pub_xyz = effects[["x", "y", "z"]].to_numpy(float)
    prov = f"{S.SIMULATED_PREFIX}v{VERSION}:seed={int(seed)}"
    parts = []
    for row in todo:
        study = str(row.study)
        n1, n2, t_thr = int(row.n1), S._n2(row.n2), float(row.t_thr)
        space = str(getattr(row, "space", "MNI") or "MNI").strip()
        peaks = listed[study]
        out = []
        for sign, q in quotas[study].items():
            mine = plan[(plan["study"] == study) & (plan["sign"] == sign)]
            if len(mine) > q:
                raise ValueError(f"construction: {study} has {len(mine)} constructed peaks of "
                                 f"sign {sign:+d}, more than its {q} peaks")
            for c in mine.itertuples(index=False):
                out.append({"sign": sign, "x": c.x, "y": c.y, "z": c.z,
                            "stat_value": sign * _t_of(c.g, n1, n2, t_thr),
                            "note": f"{CONSTRUCTED_NOTE} ("
                                    + ("beside " if c.offset else "")
                                    + f"cluster {c.cluster}, g = {c.g:+.2f})"})
            cand = peaks[peaks["sign"] == sign]
            xyz = cand[["x", "y", "z"]].to_numpy(float)
            dist = np.sqrt(((xyz[:, None, :] - pub_xyz[None]) ** 2).sum(axis=2)).min(axis=1)
            height = np.abs(cand["stat_value"].to_numpy(float))
            far = np.flatnonzero(dist >= EXCLUSION_MM)
            near = np.flatnonzero(dist < EXCLUSION_MM)
            far = far[np.argsort(-height[far], kind="stable")]
            near = near[np.argsort(-height[near], kind="stable")]
            need = int(q) - len(mine)
            if len(far) + len(near) < need:
                raise ValueError(f"{study}: its map lists {len(cand)} maxima of sign "
                                 f"{sign:+d}, {need} needed")
            rng = derive_rng(int(seed), f"standins-v3/{study}/{sign:+d}")
            taken = [np.array([c.x, c.y, c.z]) for c in mine.itertuples(index=False)]
            taken += [xyz[i] for i in far[:need]]
            for i in far[:need]:
                out.append({"sign": sign, "x": xyz[i, 0], "y": xyz[i, 1], "z": xyz[i, 2],
                            "stat_value": float(cand["stat_value"].iloc[i]),
                            "note": f"{CONSTRUCTED_NOTE} (filler: a maximum of the v2 "
                                    f"simulated map, away from the published peaks)"})
            for i in near[:max(0, need - len(far))]:
                new = relocate(rng, pub_xyz, np.array(taken))
                taken.append(new)
                out.append({"sign": sign, "x": new[0], "y": new[1], "z": new[2],
                            "stat_value": float(cand["stat_value"].iloc[i]),
                            "note": f"{CONSTRUCTED_NOTE} (filler: the t of a maximum of the "
                                    f"v2 simulated map that lay within {EXCLUSION_MM:g} mm of "
                                    f"a published peak, moved to a random brain voxel away "
                                    f"from them)"})
        if not out:
            continue
        df = pd.DataFrame(out)
        # table order: patients > controls first, then decreasing |t|, then x, y, z
        df = df.iloc[np.lexsort((df["z"].to_numpy(), df["y"].to_numpy(), df["x"].to_numpy(),
                                 -np.abs(df["stat_value"].to_numpy()),
                                 -df["sign"].to_numpy()))]
        xyz = df[["x", "y", "z"]].to_numpy(float)
        if space not in S.STUDY_SPACE_OUT:
            raise ValueError(f"{study}: unknown study space {space!r}")
        out_space, func, space_note = S.STUDY_SPACE_OUT[space]
        if func is not None:
            xyz = getattr(coords, func)(xyz)
        xyz = np.rint(xyz).astype(int) + 0
        n = len(df)
        parts.append(pd.DataFrame({
            "study": [study] * n, "peak_id": np.arange(1, n + 1),
            "sign": df["sign"].astype(int).to_numpy(), "x": xyz[:, 0], "y": xyz[:, 1],
            "z": xyz[:, 2], "space": [out_space] * n, "stat_type": ["t"] * n,
            "stat_value": np.round(df["stat_value"].to_numpy(float), 2),
            "provenance": [prov] * n,
            "note": [s + space_note for s in df["note"]]}, columns=PEAK_COLUMNS))
    if not parts:
        return pd.DataFrame(columns=PEAK_COLUMNS)
    return pd.concat(parts, ignore_index=True)
