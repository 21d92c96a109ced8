"""``python -m analysis validate-sdm``: compare the engine with the public SDM-PSI v6.21 run.

Target: model ``mod1`` (mean of 50 one-sample fMRI studies, 50 imputations) of Enge, Abdel
Rahman & Skeide (2021, NeuroImage 241:118436; repository SkeideLab/meta_semantics, commit
de53184, MIT licence), mirrored as dataset ``validation/enge2021_sdm`` (spec ``sdm-psi.md``
§10). The engine runs on the same inputs (study table, peak files, SDM's own grey-matter mask,
kernel FWHM 20 mm, anisotropy 1, 50 imputations), once per ``unknown_peak_mode``, and is
compared with SDM's ``analysis_mod1/mod1_*`` maps:

- voxelwise Pearson correlation and maximum absolute difference of g and SDM-Z (and the
  correlation of tau2 and I2);
- values at SDM's global maximum (-46,16,-10);
- recovery of the 7 clusters of SDM's report (peaks parsed from the mirrored HTML report): our
  SDM-Z at each published peak, and whether a local maximum of our SDM-Z with one-tailed
  p < 0.001 lies within 4 mm of it (no FWE threshold: our permutation maxima are not part of
  this comparison);
- acceptance check T5 on SDM's own maps: ``z = g / sqrt(var)``, ``uncorrp = Phi(z)``,
  ``H2 = 1 / (1 - I2)``.

Writes ``validation_sdm.json`` and ``validation_sdm.md`` (and the engine's g/z maps per mode)
to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

import numpy as np

LGR = logging.getLogger(__name__)

DATASET = "validation/enge2021_sdm"
GLOBAL_MAX_MNI = (-46, 16, -10)  # SDM's global maximum of mod1 (its report, spec §10.5)
REF_MAPS = {"g": "mod1_g", "var": "mod1_var", "z": "mod1_z", "tau2": "mod1_tau2",
            "i2": "mod1_h_i2", "h2": "mod1_h_h2", "q": "mod1_h_Q", "uncorrp": "uncorrp"}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <results>/validation/sdm)")
    p.add_argument("--imputations", type=int, default=None,
                   help="default: config sdm.imputations (50, as SDM's run)")
    p.add_argument("--modes", nargs="+", default=["sdm621", "corrected"],
                   choices=["sdm621", "corrected"], help="unknown_peak_mode(s) to run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-jobs", type=int, default=1)


def enge_folder(download: bool = False) -> Path:
    """The mirrored SDM-PSI run (via :func:`analysis.fetch.fetch_dataset`)."""
    from analysis.fetch import fetch_dataset

    return Path(fetch_dataset(DATASET, download=download))


def load_reference(folder: Path):
    """SDM's mask space and mod1 maps (vectors over ``sdm_mask``)."""
    import nibabel as nib

    from analysis.sdm.space import MaskSpace

    space = MaskSpace(nib.load(str(folder / "sdm_mask.nii.gz")))
    maps = {key: space.from_img(nib.load(str(folder / "analysis_mod1" / f"{stem}.nii.gz")))
            .astype(float) for key, stem in REF_MAPS.items()}
    return space, maps


def published_clusters(folder: Path) -> list[dict]:
    """Cluster peaks of SDM's threshold report (rows with MNI, SDM-Z, P and voxels)."""
    html = (folder / "analysis_mod1" / "mod1_z_voxelCorrected_p_0.00100_50.htm").read_text(
        encoding="utf-8", errors="replace")
    pat = re.compile(r"<tr><td>(-?\d+),(-?\d+),(-?\d+)</td><td>([-\d.]+)</td><td>([\d.]+)</td>"
                     r"<td>(\d+)</td><td[^>]*>([^<]*)</td></tr>")
    return [{"x": int(m[0]), "y": int(m[1]), "z": int(m[2]), "sdm_z": float(m[3]),
             "p": float(m[4]), "voxels": int(m[5]), "label": m[6].strip()}
            for m in pat.findall(html)]


def t5_checks(ref: dict) -> dict:
    """Acceptance check T5 on SDM's own maps (spec §10.7)."""
    from scipy.stats import norm

    ok = ref["var"] > 0
    z = ref["g"][ok] / np.sqrt(ref["var"][ok])
    i2 = ref["i2"] / 100.0
    return {
        "max_abs_z_minus_g_over_sqrt_var": float(np.max(np.abs(z - ref["z"][ok]))),
        "max_abs_uncorrp_minus_Phi_z": float(np.max(np.abs(ref["uncorrp"] - norm.cdf(ref["z"])))),
        "max_abs_h2_minus_1_over_1_minus_i2": float(np.max(np.abs(ref["h2"] - 1 / (1 - i2)))),
    }


def _corr(a, b) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def compare_maps(ours: dict, ref: dict, space) -> dict:
    """Correlations, differences and the values at SDM's global maximum."""
    out = {}
    for key in ("g", "z"):
        out[f"{key}_correlation"] = _corr(ours[key], ref[key])
        out[f"{key}_max_abs_diff"] = float(np.nanmax(np.abs(ours[key] - ref[key])))
        out[f"{key}_mean_diff"] = float(np.nanmean(ours[key] - ref[key]))
    out["tau2_correlation"] = _corr(ours["tau2"], ref["tau2"])
    out["i2_correlation"] = _corr(ours["i2"], ref["i2"])
    idx = int(space.voxel_index([GLOBAL_MAX_MNI])[0])
    out["at_global_max"] = {
        "mni": list(GLOBAL_MAX_MNI),
        "ours": {k: float(ours[k][idx]) for k in ("g", "var", "z", "tau2", "i2", "h2", "q")},
        "sdm": {k: float(ref[k][idx]) for k in ("g", "var", "z", "tau2", "i2", "h2", "q")},
    }
    return out


def local_maxima(z: np.ndarray, space, z_min: float) -> np.ndarray:
    """Indices of in-mask voxels that are maxima of z in their 3x3x3 neighbourhood, z > z_min."""
    from scipy import ndimage

    vol = space.to_volume(z.astype(float), fill=-np.inf)
    mx = ndimage.maximum_filter(vol, size=3, mode="constant", cval=-np.inf)
    is_max = (vol == mx) & (vol > z_min) & space.mask
    return space._index[is_max]


def cluster_recovery(z: np.ndarray, space, clusters: list[dict], radius_mm: float = 4.0,
                     p_voxel: float = 0.001) -> list[dict]:
    """For each published peak: our z there and the nearest local maximum of our z."""
    from scipy.stats import norm

    z_min = float(norm.isf(p_voxel))
    maxima = local_maxima(z, space, z_min)
    xyz = space.xyz[maxima]
    rows = []
    for c in clusters:
        p = np.array([c["x"], c["y"], c["z"]], dtype=float)
        idx = int(space.voxel_index([p])[0])
        d = np.linalg.norm(xyz - p, axis=1) if len(xyz) else np.array([np.inf])
        j = int(np.argmin(d))
        rows.append({
            **c, "our_z_at_peak": float(z[idx]) if idx >= 0 else float("nan"),
            "nearest_local_max_mm": float(d[j]),
            "nearest_local_max_z": float(z[maxima[j]]) if len(xyz) else float("nan"),
            "found_within_mm": bool(d[j] <= radius_mm),
        })
    return rows


def run_validation(out: Path | None = None, imputations: int | None = None,
                   modes=("sdm621", "corrected"), seed: int | None = None, n_jobs: int = 1,
                   folder: Path | None = None) -> dict:
    """Run the engine on the Enge folder and compare with SDM-PSI (see the module docstring)."""
    from analysis.io import write_json, write_text
    from analysis.sdm.dataset import SDMDataset
    from analysis.sdm.estimator import SDMPSI

    folder = folder or enge_folder()
    space, ref = load_reference(folder)
    clusters = published_clusters(folder)
    dataset = SDMDataset.from_sdm_project(folder)
    report = {"dataset": DATASET, "n_studies": len(dataset.studies),
              "n_voxels": space.n_voxels, "t5_sdm_maps": t5_checks(ref),
              "published_clusters": clusters, "modes": {}}
    for mode in modes:
        t0 = time.perf_counter()
        est = SDMPSI(imputations=imputations, unknown_peak_mode=mode, seed=seed,
                     n_jobs=n_jobs, keep_imputations=False, progress=True)
        res = est.fit(dataset, mask_img=space.mask_img)
        ours = {k: v.astype(float) for k, v in res.maps.items()}
        entry = compare_maps(ours, ref, space)
        entry["clusters"] = cluster_recovery(ours["z"], space, clusters)
        entry["n_clusters_found"] = int(sum(c["found_within_mm"] for c in entry["clusters"]))
        entry["n_clusters_within_8mm"] = int(sum(c["nearest_local_max_mm"] <= 8.0
                                                 for c in entry["clusters"]))
        entry["imputations"] = est.imputations
        entry["timings_s"] = {**res.timings, "total": round(time.perf_counter() - t0, 2)}
        report["modes"][mode] = entry
        if out is not None:
            res.save_maps(Path(out) / mode, names=["g", "z", "tau2", "i2"])
        LGR.info("mode %s: r(g)=%.3f r(z)=%.3f clusters %d/7", mode, entry["g_correlation"],
                 entry["z_correlation"], entry["n_clusters_found"])
    if out is not None:
        write_json(Path(out) / "validation_sdm.json", report)
        write_text(Path(out) / "validation_sdm.md", markdown_report(report))
    return report


def markdown_report(report: dict) -> str:
    """Human-readable summary of :func:`run_validation`."""
    lines = ["# Engine vs SDM-PSI v6.21 (Enge et al. 2021, mod1)", "",
             f"{report['n_studies']} studies, {report['n_voxels']} voxels (SDM's mask).", "",
             "## T5 on SDM's own maps", ""]
    lines += [f"- {k}: {v:.3g}" for k, v in report["t5_sdm_maps"].items()]
    for mode, e in report["modes"].items():
        gm = e["at_global_max"]
        lines += ["", f"## unknown_peak_mode = {mode} ({e['imputations']} imputations)", "",
                  f"- g: r = {e['g_correlation']:.4f}, max |diff| = {e['g_max_abs_diff']:.4f}, "
                  f"mean diff = {e['g_mean_diff']:.4f}",
                  f"- SDM-Z: r = {e['z_correlation']:.4f}, max |diff| = "
                  f"{e['z_max_abs_diff']:.3f}, mean diff = {e['z_mean_diff']:.3f}",
                  f"- tau2: r = {e['tau2_correlation']:.3f}; I2: r = {e['i2_correlation']:.3f}",
                  f"- at {tuple(gm['mni'])}: " + ", ".join(
                      f"{k} {gm['ours'][k]:.4g} (SDM {gm['sdm'][k]:.4g})" for k in gm["ours"]),
                  f"- published clusters found (local max, p < 0.001, within 4 mm): "
                  f"{e['n_clusters_found']}/{len(e['clusters'])} (within 8 mm: "
                  f"{e['n_clusters_within_8mm']}/{len(e['clusters'])})", "",
                  "| SDM peak | SDM-Z | our z there | nearest local max (mm) | its z | found |",
                  "|---|---|---|---|---|---|"]
        for c in e["clusters"]:
            lines.append(f"| {c['x']},{c['y']},{c['z']} | {c['sdm_z']:.3f} | "
                         f"{c['our_z_at_peak']:.3f} | {c['nearest_local_max_mm']:.1f} | "
                         f"{c['nearest_local_max_z']:.3f} | {'yes' if c['found_within_mm'] else 'no'} |")
        lines.append(f"\nTimings (s): {e['timings_s']}")
    return "\n".join(lines) + "\n"


def run_command(args: argparse.Namespace) -> int:
    from analysis import paths

    out = args.out or (paths.results_dir() / "validation" / "sdm")
    report = run_validation(out, args.imputations, args.modes, args.seed, args.n_jobs)
    for mode, e in report["modes"].items():
        print(f"{mode}: r(g) = {e['g_correlation']:.3f}, r(z) = {e['z_correlation']:.3f}, "
              f"clusters found {e['n_clusters_found']}/{len(e['clusters'])}")
    print(f"wrote {out}")
    return 0
