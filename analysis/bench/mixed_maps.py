"""Mixed inputs on Enge et al. (2021): k of the 50 peak studies replaced by statistical maps.

Enge A, Abdel Rahman R, Skeide MA (2021), NeuroImage 241:118436, published their SDM-PSI
project (50 studies of semantic cognition in children, peaks only). Here k of its studies are
replaced by t-maps **simulated** to agree with their peaks (none of these maps is a study's):
at every voxel the map's Hedges g is a point of the study's peak interval,

    g(v) = m(v) + 0.9 h(v) s(v),   m = (lower + upper) / 2,  h = (upper - lower) / 2,

with ``s = 2 Φ(ζ) - 1`` of a smooth unit Gaussian field ``ζ`` (FWHM of the compendium's
simulation, :func:`analysis.simulate.smooth_noise`), converted to t. Where the peaks fix the
effect (``h = 0``: at a peak with known t) the map reproduces the listed t value; elsewhere it
is a smooth effect the peaks allow. The studies replaced are nested (a seeded order; the 5 of
``k = 5`` are among the 10 of ``k = 10``...).

For each k the table gives: the share of study-voxels with an exact effect; the imputation
spread (SD across imputations of the imputed study values, averaged over voxels) over all studies
and over the studies still peak-only; the SDM-Z map's correlation with ``k = 0``, its maximum,
its voxels at one-tailed p < 0.001, its clusters (:func:`analysis.sdm.inference.clusters.threshold_clusters`,
default thresholds) and the published SDM-PSI cluster peaks of Enge et al. with a local
maximum of our z within 8 mm (as ``validate-sdm``).

Registered in ``python -m analysis bench`` as ``mixed-maps``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from analysis.bench import register

#: numbers of studies replaced by maps
KS = (0, 5, 10, 25, 50)
#: how far into its peak interval a simulated map goes (1 would touch the bounds)
SPREAD = 0.9


def peak_consistent_tmap(lower, upper, n1, n2, space, rng, fwhm_mm: float):
    """A t-map (NIfTI on the analysis grid) whose g lies inside a study's peak interval
    (module docstring); simulated.
    """
    from scipy.stats import norm

    from analysis.sdm.statistics.effect_sizes import t_from_g
    from analysis.simulate import smooth_noise

    field = smooth_noise(rng, fwhm_mm, space.mask, 2.0)[space.mask]
    lo, up = np.asarray(lower, float), np.asarray(upper, float)
    g = (lo + up) / 2 + SPREAD * (up - lo) / 2 * (2 * norm.cdf(field) - 1)
    n2v = None if not np.isfinite(n2) else float(n2)
    t = t_from_g(g, n1, n2v)
    t = np.where(t == 0, 1e-6, t)  # an exact 0 would read as outside the map
    return space.to_img(t)


def mixed_inputs(dataset, space, ks=KS, imputations: int = 5, seed: int = 0,
                 recreation_mask=None, published=None, fwhm_mm: float = 12.0,
                 estimator_params: dict | None = None) -> pd.DataFrame:
    """Fit ``dataset`` with k of its studies replaced by peak-consistent simulated maps.

    Parameters
    ----------
    dataset : SDMDataset
        Peak studies.
    space : MaskSpace
        Analysis space.
    ks : sequence of int
        Numbers of studies replaced.
    imputations, seed : int
        Of every fit.
    recreation_mask : nibabel image, optional
        Whole mask when ``space`` is a region of it
        (:func:`analysis.sdm.maps.preprocess.recreation_space`).
    published : list of dict, optional
        Published cluster peaks (``x, y, z``) to look for within 8 mm.
    fwhm_mm : float
        Smoothness of the maps' noise field.
    estimator_params : dict, optional
        Further :class:`~analysis.sdm.estimator.SDMPSI` parameters.

    Returns
    -------
    pandas.DataFrame
        One row per k (module docstring).
    """
    from analysis.commands.validate_sdm import cluster_recovery
    from analysis.sdm.estimator import SDMPSI
    from analysis.sdm.inference.clusters import threshold_clusters
    from analysis.sdm.inputs.statmaps import exact_bounds, sample_map
    from analysis.sdm.maps.preprocess import preprocess

    params = {"imputations": imputations, "seed": seed, **(estimator_params or {})}
    est = SDMPSI(**params)
    p = est._checked()
    peaks_only = preprocess(dataset, space, fwhm=p["fwhm"], anisotropy=p["anisotropy"],
                            unknown_peak_mode=p["unknown_peak_mode"],
                            template=p["kernel_template"], path_model=p["path_model"],
                            combine=p["combine"], recreation_mask=recreation_mask,
                            progress=False)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(peaks_only.studies)))
    maps = {}
    for i in order[:max(ks)]:
        maps[i] = peak_consistent_tmap(peaks_only.lower[i], peaks_only.upper[i],
                                       peaks_only.n1[i], peaks_only.n2[i], space, rng, fwhm_mm)
    rows, z0 = [], None
    for k in ks:
        bounds = peaks_only.subset(peaks_only.studies)
        for i in order[:k]:  # the map-study path of preprocess: resample, then exact bounds
            exact_bounds(bounds.lower[i], bounds.upper[i], sample_map(maps[i], space),
                         bounds.n1[i], bounds.n2[i])
        t0 = time.perf_counter()
        res = SDMPSI(**params).fit_preprocessed(bounds, dataset.studies)
        seconds = time.perf_counter() - t0
        sd = res.imputations.std(axis=0, dtype=np.float64)      # (k, V)
        rest = sorted(set(range(len(order))) - set(order[:k]))
        z = res.maps["z"].astype(float)
        z0 = z if z0 is None else z0
        cl = threshold_clusters(z, space, local_peaks=False)
        row = {"k maps": k, "exact study-voxels (%)": 100 * float(bounds.known.mean()),
               "imputation SD, all studies": float(sd.mean()),
               "imputation SD, peak-only studies": float(sd[rest].mean()) if rest else np.nan,
               "r(z, k=0)": float(np.corrcoef(z, z0)[0, 1]), "max z": float(z.max()),
               "voxels p<0.001": int((z > 3.0902).sum() + (z < -3.0902).sum()),
               "clusters": int((cl.table["peak_type"] == "cluster").sum())
               if len(cl.table) else 0,
               "fit s": round(seconds, 1)}
        if published:
            rec = cluster_recovery(z, space, published)
            row["published peaks within 8 mm"] = int(sum(c["nearest_local_max_mm"] <= 8.0
                                                         for c in rec))
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """The table as Markdown (numbers rounded for reading)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in table.to_dict("records"):
        cells = []
        for c in cols:
            v = rec[c]
            cells.append(f"{v:,}" if isinstance(v, (int, np.integer)) else "–" if np.isnan(v) else
                         f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@register("mixed-maps", "Enge et al. (2021) with k studies replaced by peak-consistent maps")
def bench_mixed_maps(args: argparse.Namespace) -> dict:
    import nibabel as nib

    from analysis.commands.validate_sdm import published_clusters
    from analysis.fetch import fetch_dataset
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.space import MaskSpace

    folder = fetch_dataset("validation/enge2021_sdm")
    dataset = SDMDataset.from_sdm_project(folder)
    space = MaskSpace(nib.load(str(folder / "sdm_mask.nii.gz")))
    imputations = int(getattr(args, "mixed_imputations", 5) or 5)
    table = mixed_inputs(dataset, space, imputations=imputations, seed=0,
                         published=published_clusters(folder))
    return {"metrics": {"table": "\n" + markdown_table(table)}, "notes": [
        f"{imputations} imputations per fit (SDM-PSI's default is 50), SDM-PSI's mask of "
        "Enge et al. (193,768 voxels)",
        "the maps are simulated to agree with the peaks, not the studies' own maps"]}
