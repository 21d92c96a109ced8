"""Parts of one simulated meta-analysis of stage ``design``, each against the implementation it
replaced, in one process.

Registered in ``python -m analysis bench`` as ``replicate-parts``. For :data:`REPLICATES` null
meta-analyses of the design (streams ``design/null/<i>``, as the stage) it times

* the simulation of the 11 studies in threads (``simulate_design(n_jobs=-1)``) against one
  study after another (``n_jobs=1``); the peak tables must be identical;
* the anisotropic kernels of every simulated peak: the compiled bounded Dijkstra with the
  peaks of a study in threads (``AnisotropicKernel.prefetch``) against
  :func:`scipy.sparse.csgraph.dijkstra` with ``limit`` on the mask graph augmented by one
  virtual source per peak (:func:`scipy_path_lengths`, the former implementation); the weights must
  be identical;
* the distinct bound patterns of the MetaNSUE MLE: hashing
  (:func:`analysis.sdm.statistics.metansue.mle.distinct_columns`) against
  ``np.unique(axis=0)``; the patterns must be the same.

Each ratio is reference time / new time, summed over the replicates.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from analysis.bench import peak_rss_gb, register

#: null meta-analyses timed (streams design/null/0, 1, ...)
REPLICATES = 3


def scipy_path_lengths(kernel, xyz, batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Path lengths of the peaks ``xyz`` by scipy's Dijkstra (reference of the compiled search).

    ``batch`` peaks per call, each a virtual node joined to its start voxels
    (``AnisotropicKernel._seeds``) on the mask graph, searched up to ``kernel._limit()``;
    returns ``(reached voxels, their path lengths)`` per peak.
    """
    from scipy import sparse
    from scipy.sparse.csgraph import dijkstra

    from analysis.sdm.maps.kernel import peak_position

    g = kernel._graph
    nv = kernel.space.n_voxels
    out = []
    pts = [np.asarray(p, dtype=float) for p in np.atleast_2d(xyz)]
    for b0 in range(0, len(pts), batch):
        part = pts[b0:b0 + batch]
        seeds = [kernel._seeds(peak_position(p)) for p in part]
        ptr = g.indptr[-1] + np.cumsum([len(s[1]) for s in seeds])
        aug = sparse.csr_matrix(
            (np.concatenate([g.data, *(s[2] for s in seeds)]),
             np.concatenate([g.indices, *(s[1] for s in seeds)]),
             np.concatenate([g.indptr, ptr])), shape=(nv + len(part), nv + len(part)))
        dist = dijkstra(aug, directed=True, indices=np.arange(nv, nv + len(part)),
                        limit=kernel._limit())
        for row in dist[:, :nv]:
            idx = np.flatnonzero(np.isfinite(row))
            out.append((idx, row[idx]))
    return out


def scipy_kernels(kernel, xyz) -> dict:
    """Kernels of the peaks ``xyz`` from :func:`scipy_path_lengths`: ``{key: (voxels, K)}`` as
    the kernel's cache holds them.
    """
    from analysis.sdm.maps.kernel import peak_position

    pts = [np.asarray(p, dtype=float) for p in np.atleast_2d(xyz)]
    out = {}
    for p, (idx, d) in zip(pts, scipy_path_lengths(kernel, pts), strict=True):
        src = kernel._seeds(peak_position(p))[0]
        out[kernel._key(p)] = kernel._from_distance(peak_position(p), src, idx, d)
    return out


@register("replicate-parts", "one simulated meta-analysis of stage design: threaded "
                             "simulation, compiled kernel path search and hashed bound "
                             "patterns vs the former implementations")
def bench_replicate_parts(args: argparse.Namespace) -> dict:
    from analysis import paths
    from analysis.checks import design_simulation as D
    from analysis.config import load_config
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.maps.preprocess import preprocess
    from analysis.sdm.maps.space import MaskSpace
    from analysis.sdm.statistics.metansue.mle import distinct_columns
    from analysis.stages import params

    cfg = load_config()
    dataset = params.compendium_dataset(paths.data_dir(), cfg)
    studies = dataset.studies
    quotas = D.design_quotas(studies, dataset.peaks)
    space = MaskSpace(params.masks(cfg)[0])
    kernel = params.kernel(cfg, space)
    t = {"sim_serial": 0.0, "sim_threads": 0.0, "kern_scipy": 0.0, "kern_compiled": 0.0,
         "uniq_numpy": 0.0, "uniq_hash": 0.0}
    n_peaks = 0
    kernel.prefetch(space.xyz[:2] + 0.5)  # load the compiled search
    for i in range(REPLICATES):
        stream = f"design/null/{i}"
        t0 = time.perf_counter()
        serial, _ = D.simulate_design(studies, quotas, int(cfg["seed"]), stream, cfg)
        t["sim_serial"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        peaks, _ = D.simulate_design(studies, quotas, int(cfg["seed"]), stream, cfg, n_jobs=-1)
        t["sim_threads"] += time.perf_counter() - t0
        if not serial[0].equals(peaks[0]):
            raise AssertionError(f"replicate {i}: threaded simulation differs")
        xyz = peaks[0][["x", "y", "z"]].to_numpy(dtype=float)
        n_peaks += len(xyz)
        t0 = time.perf_counter()
        ref = scipy_kernels(kernel, xyz)
        t["kern_scipy"] += time.perf_counter() - t0
        kernel._cache.clear()
        kernel._cached_size = 0
        t0 = time.perf_counter()
        for sid in studies["study"]:
            kernel.prefetch(xyz[(peaks[0]["study"] == sid).to_numpy()])
        t["kern_compiled"] += time.perf_counter() - t0
        for key, (idx, k) in ref.items():
            got = kernel._cache[key]
            if not (np.array_equal(idx, got[0]) and np.array_equal(k, got[1])):
                raise AssertionError(f"replicate {i}: kernel of peak {key} differs")
        ds = SDMDataset(studies[["study", "n1", "n2", "t_thr"]].reset_index(drop=True),
                        peaks[0].reset_index(drop=True))
        b = preprocess(ds, space, unknown_peak_mode=cfg["sdm"]["unknown_peak_mode"],
                       combine=cfg["sdm"]["combine"], kernel=kernel, progress=False)
        both = np.concatenate([b.lower, b.upper], axis=0)
        t0 = time.perf_counter()
        uniq = np.unique(both.T, axis=0)
        t["uniq_numpy"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        first, _ = distinct_columns(both)
        t["uniq_hash"] += time.perf_counter() - t0
        if len(first) != len(uniq):
            raise AssertionError(f"replicate {i}: {len(first)} patterns, np.unique {len(uniq)}")
    metrics = {"replicates": REPLICATES, "peaks": n_peaks, "voxels": int(space.n_voxels),
               **{f"{k}_s": round(v, 3) for k, v in t.items()},
               "peak_rss_gb": round(peak_rss_gb(), 2)}
    ratios = {"simulation (one thread / threads)": round(t["sim_serial"] / t["sim_threads"], 2),
              "kernel path search (scipy / compiled, threads)":
                  round(t["kern_scipy"] / t["kern_compiled"], 2),
              "distinct bound patterns (np.unique / hashed)":
                  round(t["uniq_numpy"] / t["uniq_hash"], 2)}
    notes = ["every pair checked identical in the run (peak tables, kernel weights, number of "
             "patterns)", "threads: numba's thread count / joblib's n_jobs=-1 (all cores)"]
    return {"metrics": metrics, "ratios": ratios, "notes": notes}
