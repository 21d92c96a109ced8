"""Benchmarks of the characterisation (for ``make bench``; register :data:`BENCHMARKS`).

``macm_vs_nimare``: one seed's MACM with this package (incidence matrix cached, as in every run
after the first) versus NiMARE's ``MKDAChi2`` (``MKDAKernel(r=6)``) on the same studies and foci,
in the same process; reports both times, their ratio, the growth of the process's peak RSS
during each step and the agreement of the maps (Pearson r of the unthresholded z, share of
identical suprathreshold voxels after FDR q = 0.01 and the p(A) >= 1 % mask).

``incidence_build``: building the Neurosynth study x voxel matrix from scratch (no cache).
"""

from __future__ import annotations

import logging
import resource
import time

import numpy as np

from analysis.config import load_config

LGR = logging.getLogger(__name__)


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _timed(func, *args):
    """Run ``func``; return its result, seconds, and growth of the process's peak RSS (MiB).

    The RSS growth is 0 when the step stays below an earlier peak, so run the lighter step
    first; no tracemalloc (it would slow allocation-heavy code such as NiMARE's).
    """
    before = _maxrss_mib()
    t0 = time.perf_counter()
    out = func(*args)
    sec = time.perf_counter() - t0
    return out, sec, max(_maxrss_mib() - before, 0.0)


def macm_vs_nimare(seed=(0, 48, 0)) -> dict:
    """Time and compare our MACM with NiMARE's MKDAChi2 for one seed (slow: ~1-2 min).

    Returns
    -------
    dict
        ``ours_s``, ``nimare_s``, ``speedup``, ``ours_rss_growth_mib``, ``nimare_rss_growth_mib``,
        ``pearson_r_unthresholded``, ``pearson_r_thresholded``, ``share_identical``, ``dice``,
        voxel counts.
    """
    from analysis.characterisation.databases import CoordinateDB, load_neurosynth
    from analysis.characterisation.macm import compare_maps, macm, nimare_macm

    cfg = load_config()["characterisation"]
    db = load_neurosynth()
    db.incidence(cfg["macm_kernel_radius_mm"])  # the cached matrix: what every later run reads
    macm(db, (0, 0, 0), cfg)  # warm column sums (one-off per process)
    ours, t_ours, m_ours = _timed(macm, db, seed, cfg)
    fresh = CoordinateDB(db.name, db.foci, db.ids, db.checksum)  # reads the cached matrix
    _, t_cold, _ = _timed(macm, fresh, seed, cfg)
    theirs, t_nim, m_nim = _timed(nimare_macm, db, seed, cfg)
    cmp = compare_maps(ours.z_fdr, theirs["z_fdr"])
    out = {
        "seed": list(seed), "n_selected": ours.n_selected,
        "ours_s": round(t_ours, 3), "ours_with_cache_read_s": round(t_cold, 3),
        "nimare_s": round(t_nim, 2), "nimare_fit_s": round(theirs["fit_seconds"], 2),
        "speedup": round(t_nim / t_ours, 1),
        "speedup_fit_only_vs_cache_read": round(theirs["fit_seconds"] / t_cold, 1),
        "ours_rss_growth_mib": round(m_ours, 1), "nimare_rss_growth_mib": round(m_nim, 1),
        "process_peak_rss_mib": round(_maxrss_mib(), 1),
        "pearson_r_unthresholded": float(np.corrcoef(ours.z, theirs["z"])[0, 1]),
        "pearson_r_thresholded": cmp["pearson_r"], "share_identical": cmp["share_identical"],
        "dice": cmp["dice"], "n_supra_ours": cmp["n_supra_ours"],
        "n_supra_nimare": cmp["n_supra_nimare"], "n_supra_both": cmp["n_supra_both"],
    }
    LGR.info("MACM vs NiMARE: %s", out)
    return out


def incidence_build() -> dict:
    """Seconds to build the Neurosynth incidence matrix without the cache."""
    from analysis.characterisation.databases import (
        build_incidence,
        load_neurosynth,
        neurosynth_mask,
    )

    cfg = load_config()["characterisation"]
    db = load_neurosynth()
    mimg = neurosynth_mask()
    mat, sec, peak = _timed(build_incidence, db.foci, db.n_studies, cfg["macm_kernel_radius_mm"],
                            np.asarray(mimg.dataobj) > 0, mimg.affine)
    return {"seconds": round(sec, 2), "rss_growth_mib": round(peak, 1), "nnz": int(mat.nnz),
            "shape": list(mat.shape)}


#: name -> callable returning a dict of measurements (for analysis/commands/bench.py)
BENCHMARKS = {
    "characterisation.macm_vs_nimare": macm_vs_nimare,
    "characterisation.incidence_build": incidence_build,
}


if __name__ == "__main__":  # python -m analysis.bench.characterisation_macm
    import json

    logging.basicConfig(level=logging.INFO)
    print(json.dumps({k: f() for k, f in BENCHMARKS.items()}, indent=2))
