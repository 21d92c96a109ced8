"""Meta-analytic co-activation maps (MACM) exactly as neurosynth.org's location pages make them.

Algorithm (neurosynth-web ``make_coactivation_map``; neurosynth 0.3.7 ``analysis/meta.py`` and
``analysis/stats.py``; Yarkoni et al. 2011):

1. select every study with >= 1 focus within ``r`` = 6 mm of the seed (TAL foci converted to MNI);
2. each study's image is the union of 6 mm hard spheres around its foci (2 mm grid, brain mask);
3. at every voxel, the **association test** (formerly "reverse inference", ``pFgA_z``): a two-way
   chi-square (2 x 2, no continuity correction) of active/inactive x selected/unselected; a cell
   with zero expected count contributes 1 (Neurosynth's rule); ``z = |Phi^-1(p/2)| * sign(p(A|F) -
   p(A|not F))``, computed as ``sign * sqrt(chi2)`` (identical for 1 df, without underflow);
4. Benjamini-Hochberg threshold at q = 0.01 over all in-mask voxels; voxels with p above it -> 0;
5. voxels active in < 1 % of all studies (``min_studies=0.01``) -> 0.

Neurosynth floors p at 1e-240 (caps |z| near 33) for display; this module does not (as NiMARE's
``MKDAChi2``), which changes only the largest z values, never the thresholded voxel set.

Counting is one sparse row-slice sum over the cached incidence matrix, so a seed costs well under a
second once the matrix exists (NiMARE's ``MKDAChi2`` rebuilds every study image each time).

References
----------
Yarkoni T et al. (2011). Nat Methods 8:665-670. Benjamini Y, Hochberg Y (1995). J R Stat Soc B
57:289-300. Salo T et al. (2023). NiMARE. Aperture Neuro 3:1-32.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import special

from analysis.characterisation.databases import CoordinateDB, neurosynth_mask

LGR = logging.getLogger(__name__)


@dataclass
class MacmResult:
    """One seed's co-activation analysis.

    Attributes
    ----------
    seed : tuple of float
        MNI seed.
    n_selected, n_unselected : int
        Study counts.
    z : numpy.ndarray
        Unthresholded association z over in-mask voxels.
    p : numpy.ndarray
        Its two-sided p-values.
    p_active : numpy.ndarray
        p(A): share of all studies active at each voxel.
    p_threshold : float
        BH threshold on p (-1 when nothing survives).
    z_fdr : numpy.ndarray
        The published map: z where p <= threshold and p(A) >= min fraction, else 0.
    """

    seed: tuple
    n_selected: int
    n_unselected: int
    z: np.ndarray
    p: np.ndarray
    p_active: np.ndarray
    p_threshold: float
    z_fdr: np.ndarray

    def to_img(self, which: str = "z_fdr") -> nib.Nifti1Image:
        """The map ``which`` as a 91 x 109 x 91 image on Neurosynth's grid."""
        return vector_to_img(getattr(self, which))


def vector_to_img(vec: np.ndarray) -> nib.Nifti1Image:
    """In-mask vector (Neurosynth mask order) -> float32 image."""
    mimg = neurosynth_mask()
    mask = np.asarray(mimg.dataobj) > 0
    vol = np.zeros(mask.shape, dtype=np.float32)
    vol[mask] = vec
    return nib.Nifti1Image(vol, mimg.affine)


def img_to_vector(img: nib.Nifti1Image) -> np.ndarray:
    """Image on Neurosynth's grid -> in-mask vector."""
    mimg = neurosynth_mask()
    if img.shape[:3] != mimg.shape or not np.allclose(img.affine, mimg.affine):
        from nilearn.image import resample_to_img

        img = resample_to_img(img, mimg, interpolation="continuous", force_resample=True,
                              copy_header=True)
    return np.asarray(img.dataobj, dtype=np.float64)[np.asarray(mimg.dataobj) > 0]


def association_test(n_sel_active: np.ndarray, n_sel: int, n_unsel_active: np.ndarray,
                     n_unsel: int) -> tuple[np.ndarray, np.ndarray]:
    """Neurosynth's two-way chi-square association test, vectorised over voxels.

    Parameters
    ----------
    n_sel_active, n_unsel_active : numpy.ndarray
        Per voxel, selected / unselected studies active there.
    n_sel, n_unsel : int
        Number of selected / unselected studies.

    Returns
    -------
    z, p : numpy.ndarray
        Signed z (positive: more often active in selected studies) and two-sided p.
    """
    a = np.asarray(n_sel_active, dtype=np.float64)
    b = np.asarray(n_unsel_active, dtype=np.float64)
    cells = np.stack([a, b, n_sel - a, n_unsel - b])  # [active sel, active unsel, inact sel, ...]
    row = np.stack([a + b, a + b, cells[2] + cells[3], cells[2] + cells[3]])
    col = np.array([n_sel, n_unsel, n_sel, n_unsel], dtype=np.float64)[:, None]
    total = float(n_sel + n_unsel)
    exp = row * col / total
    with np.errstate(divide="ignore", invalid="ignore"):
        contrib = np.where(exp > 0, (cells - exp) ** 2 / exp, 1.0)
    chi2 = contrib.sum(0)
    p = special.chdtrc(1, chi2)
    sign = np.sign(a / max(n_sel, 1) - b / max(n_unsel, 1))
    return sign * np.sqrt(chi2), p


def fdr_threshold(p: np.ndarray, q: float) -> float:
    """Benjamini-Hochberg p threshold (Neurosynth ``stats.fdr``); -1 when nothing survives."""
    s = np.sort(np.asarray(p, dtype=np.float64))
    below = np.flatnonzero(s <= np.arange(1, len(s) + 1) * q / len(s))
    return float(s[below[-1]]) if len(below) else -1.0


def macm(db: CoordinateDB, seed, cfg: dict) -> MacmResult:
    """Co-activation map of one seed (Neurosynth algorithm, parameters from ``characterisation``).

    Parameters
    ----------
    db : CoordinateDB
        Neurosynth v7 (TAL converted).
    seed : sequence of 3 floats
        MNI coordinate.
    cfg : dict
        The ``characterisation`` configuration section (``macm_radius_mm``,
        ``macm_kernel_radius_mm``, ``macm_fdr_q``, ``macm_min_study_fraction``).

    Returns
    -------
    MacmResult
    """
    sel = db.studies_near(seed, cfg["macm_radius_mm"])
    inc = db.incidence(cfg["macm_kernel_radius_mm"])
    n_sel = int(sel.sum())
    n_unsel = db.n_studies - n_sel
    total = _column_counts(db, cfg["macm_kernel_radius_mm"])
    sel_active = np.asarray(inc[np.flatnonzero(sel)].sum(0), dtype=np.float64).ravel()
    z, p = association_test(sel_active, n_sel, total - sel_active, n_unsel)
    p_active = total / db.n_studies
    thr = fdr_threshold(p, cfg["macm_fdr_q"])
    z_fdr = np.where(p <= thr, z, 0.0)
    z_fdr[p_active < cfg["macm_min_study_fraction"]] = 0.0
    LGR.info("MACM %s: %d selected / %d studies; FDR p <= %.3g; %d voxels > 0", tuple(seed),
             n_sel, db.n_studies, thr, int((z_fdr > 0).sum()))
    return MacmResult(tuple(float(v) for v in seed), n_sel, n_unsel, z, p, p_active, thr, z_fdr)


def _column_counts(db: CoordinateDB, radius_mm: float) -> np.ndarray:
    key = ("colsum", float(radius_mm))
    if key not in db._incidence:
        db._incidence[key] = np.asarray(db.incidence(radius_mm).sum(0, dtype=np.int64),
                                        dtype=np.float64).ravel()
    return db._incidence[key]


def nimare_macm(db: CoordinateDB, seed, cfg: dict) -> dict:
    """The same MACM with NiMARE's ``MKDAChi2`` (cross-check; slow: ~1 min, > 1 GB).

    The NiMARE dataset is built from this module's MNI foci (so both use the same studies and
    coordinates); ``MKDAKernel(r=kernel radius)``, ``prior=0.5``; BH FDR via
    ``FDRCorrector(method="indep")`` on the association p; p(A) >= min fraction applied by hand.

    Returns
    -------
    dict
        ``z`` (association z, unthresholded), ``z_fdr`` (thresholded as above), ``p``
        (uncorrected), vectors over Neurosynth's mask; ``fit_seconds`` (selection, fit and
        FDR, without building the NiMARE Dataset).
    """
    import pandas as pd
    from nimare.correct import FDRCorrector
    from nimare.meta.cbma.mkda import MKDAChi2
    from nimare.meta.kernel import MKDAKernel

    sel = db.studies_near(seed, cfg["macm_radius_mm"])
    foci = db.foci
    coords = pd.DataFrame({
        "id": foci["id"].astype(str) + "-1", "study_id": foci["id"].astype(str),
        "contrast_id": "1", "x": foci["x"], "y": foci["y"], "z": foci["z"], "space": "MNI",
    })
    dset = _nimare_dataset(coords)
    ids = np.asarray(dset.ids)
    study_of = np.searchsorted(db.ids, np.array([int(i.split("-")[0]) for i in ids]))
    sel_ids = ids[sel[study_of]]
    unsel_ids = ids[~sel[study_of]]
    t0 = time.perf_counter()
    est = MKDAChi2(kernel_transformer=MKDAKernel(r=cfg["macm_kernel_radius_mm"]), prior=0.5)
    res = est.fit(dset.slice(sel_ids), dset.slice(unsel_ids))
    z = img_to_vector(res.get_map("z_desc-association"))
    p = img_to_vector(res.get_map("p_desc-association"))
    pa = img_to_vector(res.get_map("prob_desc-A"))
    cres = FDRCorrector(method="indep", alpha=cfg["macm_fdr_q"]).transform(res)
    p_fdr = img_to_vector(cres.get_map("p_desc-association_level-voxel_corr-FDR_method-indep"))
    z_fdr = np.where((p_fdr < cfg["macm_fdr_q"]) & (pa >= cfg["macm_min_study_fraction"]), z, 0.0)
    return {"z": z, "p": p, "z_fdr": z_fdr, "fit_seconds": time.perf_counter() - t0}


def _nimare_dataset(coords):
    """Build a NiMARE Dataset from a coordinates table (NiMARE dict format)."""
    from nimare.dataset import Dataset

    source: dict = {}
    for (sid, cid), g in coords.groupby(["study_id", "contrast_id"], sort=True):
        source.setdefault(sid, {"contrasts": {}})["contrasts"][cid] = {"coords": {
            "space": "MNI", "x": g["x"].tolist(), "y": g["y"].tolist(), "z": g["z"].tolist()}}
    return Dataset(source, target="mni152_2mm", mask=neurosynth_mask())


def compare_maps(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Agreement of two thresholded maps: Pearson r (all voxels), Dice and identity of > 0 sets."""
    a, b = ours > 0, theirs > 0
    union = int((a | b).sum())
    return {
        "pearson_r": float(np.corrcoef(ours, theirs)[0, 1]),
        "n_supra_ours": int(a.sum()), "n_supra_nimare": int(b.sum()),
        "n_supra_both": int((a & b).sum()),
        "share_identical": float((a & b).sum() / union) if union else 1.0,
        "dice": float(2 * (a & b).sum() / (a.sum() + b.sum())) if union else 1.0,
    }
