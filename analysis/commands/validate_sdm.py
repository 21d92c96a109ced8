"""``python -m analysis validate-sdm``: compare the engine with the public SDM-PSI v6.21 run.

Target: model ``mod1`` (mean of 50 one-sample fMRI studies, 50 imputations) of Enge, Abdel
Rahman & Skeide (2021, NeuroImage 241:118436; repository SkeideLab/meta_semantics, commit
de53184, MIT licence), mirrored as dataset ``validation/enge2021_sdm`` (study table, peak files,
SDM's mask, SDM's bound maps of all 50 studies in ``pp/``, the ``mod1`` maps and report). The
engine runs with SDM-PSI's settings (SDM's mask, kernel FWHM 20 mm, anisotropy 1, v6.21's
handling of peaks without a statistic, DerSimonian-Laird heterogeneity, 50 imputations):

- ``peaks``: from the peak files alone (SDM's ``pp/`` maps are not read); the kernel's default
  stretch template was fitted on SDM's maps of 25 of these 50 studies
  (:mod:`analysis.kernel_template`), so ``peaks_tissue_template`` repeats the run with the
  tissue-similarity template, which owes nothing to these maps;
- ``bounds``: from SDM's own bound maps (isolates the statistics from the kernel);
- each under two seeds: the noise floor (imputation noise) beside every correlation;
- ``bounds_reml``: SDM's bound maps with REML, to show what the estimator changes.

Measures: voxelwise Pearson correlation and differences of g, SDM-Z, tau2 and I2 against SDM's
``analysis_mod1/mod1_*`` maps; values at SDM's global maximum (-46,16,-10); for the 7 clusters of
SDM's report, our SDM-Z at each published peak and whether a local maximum of our SDM-Z with
one-tailed p < 0.001 lies within 4 mm; the internal consistency of SDM's own maps (``z = g /
sqrt(var)``, ``uncorrp = Phi(z)``, ``H2 = 1 / (1 - I2)``). The covariate-adjusted and
meta-regression models of the folder are not compared: their SDM-PSI outputs are not mirrored.

Writes ``validation_sdm.json`` and ``validation_sdm.md`` (and the g/z/tau2/I2 maps of the
``peaks`` and ``bounds`` runs) to ``--out``.
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
GLOBAL_MAX_MNI = (-46, 16, -10)  # SDM's global maximum of mod1 (its threshold report)
REF_MAPS = {"g": "mod1_g", "var": "mod1_var", "z": "mod1_z", "tau2": "mod1_tau2",
            "i2": "mod1_h_i2", "h2": "mod1_h_h2", "q": "mod1_h_Q", "uncorrp": "uncorrp"}


EPILOG = """\
examples:
  python -m analysis validate-sdm                      # writes <results>/validation/sdm
  python -m analysis validate-sdm --imputations 10 --no-reml --out validation
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <results>/validation/sdm)")
    p.add_argument("--imputations", type=int, default=None,
                   help="MetaNSUE imputations (default: config sdm.imputations, 50 as SDM's run)")
    p.add_argument("--mode", default="sdm621", choices=["sdm621", "corrected"],
                   help="unknown_peak_mode of the run from peaks (sdm621: as SDM-PSI v6.21)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed of the first run; the second uses seed + 1 (default: the "
                        "configuration's seed)")
    p.add_argument("--n-jobs", type=int, default=1,
                   help="parallel workers of each fit (default 1)")
    p.add_argument("--no-reml", action="store_true",
                   help="skip the REML run from SDM's bound maps (shown for comparison)")


def enge_folder(download: bool = False) -> Path:
    """The mirrored SDM-PSI run (via :func:`analysis.fetch.fetch_dataset`)."""
    from analysis.fetch import fetch_dataset

    return Path(fetch_dataset(DATASET, download=download))


def load_reference(folder: Path):
    """SDM's mask space and mod1 maps (vectors over ``sdm_mask``)."""
    import nibabel as nib

    from analysis.sdm.maps.space import MaskSpace

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
    """Internal consistency of SDM's own maps (``z = g / sqrt(var)``, ``uncorrp = Phi(z)``, H²)."""
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


#: acceptance targets of the report (SDM-PSI fidelity)
TARGETS = {"peaks_z_r": 0.98, "peaks_tau2_r": 0.90, "peaks_cluster_mm": 4.0,
           "peaks_cluster_dz": 0.3, "bounds_z_r": 0.995}


def load_sdm_bounds(folder: Path, dataset, space) -> tuple:
    """SDM-PSI's own bound maps (``pp/<study>_lower|upper.nii.gz``) of every study of the table."""
    from analysis.sdm.maps.preprocess import read_bound_maps

    studies = list(dataset.studies["study"])
    lower, upper = read_bound_maps(folder / "pp", studies, space)
    tab = dataset.studies
    return lower, upper, tab["n1"].to_numpy(float), tab["n2"].to_numpy(float), studies


def _entry(res, ref, space, clusters, seconds: float) -> dict:
    ours = {k: v.astype(float) for k, v in res.maps.items()}
    e = compare_maps(ours, ref, space)
    e["clusters"] = cluster_recovery(ours["z"], space, clusters)
    e["n_clusters_found"] = int(sum(c["found_within_mm"] for c in e["clusters"]))
    e["n_clusters_within_8mm"] = int(sum(c["nearest_local_max_mm"] <= 8.0
                                         for c in e["clusters"]))
    e["max_abs_dz_at_sdm_peaks"] = float(max(abs(c["our_z_at_peak"] - c["sdm_z"])
                                             for c in e["clusters"]))
    e["params"] = {k: v for k, v in res.params.items() if k != "design_columns"}
    e["timings_s"] = {**res.timings, "total": round(seconds, 2)}
    return e


def noise_floor(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement of two z maps of the same data under two seeds (imputation noise)."""
    ok = np.isfinite(a) & np.isfinite(b)
    return {"z_correlation": float(np.corrcoef(a[ok], b[ok])[0, 1]),
            "z_max_abs_diff": float(np.max(np.abs(a[ok] - b[ok])))}


def run_validation(out: Path | None = None, imputations: int | None = None,
                   mode: str = "sdm621", seed: int | None = None, n_jobs: int = 1,
                   folder: Path | None = None, reml: bool = True) -> dict:
    """Run the engine on the Enge folder and compare with SDM-PSI ``mod1``.

    Runs (all on SDM's mask, DerSimonian-Laird unless said, the configured number of
    imputations):

    - ``peaks``: from the peak files only (SDM's ``pp/`` maps are not read), under two seeds;
    - ``bounds``: from SDM's own bound maps (isolates the statistics from the kernel), under two
      seeds, and once with REML for comparison (``reml``).

    The two seeds of each give the noise floor (imputation noise) beside every correlation.
    """
    from analysis.config import load_config
    from analysis.io import write_json
    from analysis.resources import stretch_template
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.sdm.inputs.io import write_text
    from analysis.stages import params

    folder = folder or enge_folder()
    cfg = load_config()
    seed = int(cfg["seed"] if seed is None else seed)
    imputations = int(cfg["sdm"]["imputations"] if imputations is None else imputations)
    space, ref = load_reference(folder)
    clusters = published_clusters(folder)
    dataset = SDMDataset.from_sdm_project(folder)
    lower, upper, n1, n2, studies = load_sdm_bounds(folder, dataset, space)
    report = {"dataset": DATASET, "n_studies": len(dataset.studies),
              "n_peaks": len(dataset.peaks), "n_voxels": space.n_voxels,
              "t5_sdm_maps": t5_checks(ref), "published_clusters": clusters,
              "targets": TARGETS, "runs": {}, "noise_floor": {}}

    def est(s, heterogeneity="dl", template=None):
        kw = {} if template is None else {"kernel_template": stretch_template(
            template, cfg["sdm"]["template"])}
        return params.estimator(cfg, imputations, s, unknown_peak_mode=mode, n_jobs=n_jobs,
                                heterogeneity=heterogeneity, keep_imputations=False,
                                progress=True, **kw)

    z = {}
    plan = [("peaks", seed, "dl", None), ("peaks_seed2", seed + 1, "dl", None),
            ("peaks_tissue_template", seed, "dl", "gray_matter"),
            ("bounds", seed, "dl", None), ("bounds_seed2", seed + 1, "dl", None)]
    plan += [("bounds_reml", seed, "reml", None)] if reml else []
    for name, s, het, template in plan:
        t0 = time.perf_counter()
        e_ = est(s, het, template)
        if name.startswith("peaks"):
            res = e_.fit(dataset, mask_img=space.mask_img)
        else:
            res = e_.fit_bounds(lower, upper, n1, n2, space, studies=studies)
        entry = _entry(res, ref, space, clusters, time.perf_counter() - t0)
        entry["seed"] = s
        report["runs"][name] = entry
        z[name] = res.maps["z"].astype(float)
        if out is not None and name in ("peaks", "bounds"):
            res.save_maps(Path(out) / name, names=["g", "z", "tau2", "i2"])
        LGR.info("%s: r(z)=%.4f r(tau2)=%.3f clusters %d/7", name, entry["z_correlation"],
                 entry["tau2_correlation"], entry["n_clusters_found"])
    report["noise_floor"]["peaks"] = noise_floor(z["peaks"], z["peaks_seed2"])
    report["noise_floor"]["bounds"] = noise_floor(z["bounds"], z["bounds_seed2"])
    p, b = report["runs"]["peaks"], report["runs"]["bounds"]
    report["checks"] = {
        "peaks_z_r": p["z_correlation"] >= TARGETS["peaks_z_r"],
        "peaks_tau2_r": p["tau2_correlation"] >= TARGETS["peaks_tau2_r"],
        "peaks_clusters_within_4mm": p["n_clusters_found"] == len(clusters),
        "peaks_dz_at_sdm_peaks": p["max_abs_dz_at_sdm_peaks"] <= TARGETS["peaks_cluster_dz"],
        "bounds_z_r": b["z_correlation"] >= TARGETS["bounds_z_r"],
    }
    report["kernel_note"] = ("The default kernel template (enge_fit) was fitted on SDM-PSI's "
                             "bound maps of 25 of these 50 studies (even positions in sorted "
                             "order); peaks_tissue_template owes nothing to SDM's maps.")
    report["not_run"] = ("The covariate-adjusted and meta-regression models of this folder "
                         "are not compared: their SDM-PSI outputs are not in the mirror.")
    if out is not None:
        write_json(Path(out) / "validation_sdm.json", report)
        write_text(Path(out) / "validation_sdm.md", markdown_report(report))
    return report


def markdown_report(report: dict) -> str:
    """Human-readable summary of :func:`run_validation`: every figure beside SDM's."""
    nf = report["noise_floor"]
    lines = ["# Engine vs SDM-PSI v6.21 (Enge et al. 2021, mod1)", "",
             f"{report['n_studies']} studies, {report['n_peaks']} peaks, "
             f"{report['n_voxels']} voxels (SDM's mask).", "",
             "## Summary", "",
             "| run | r(z) | noise floor r(z) | r(g) | r(tau2) | r(I2) | clusters within 4 mm "
             "| max abs dz at SDM peaks |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in report["runs"].items():
        floor = nf.get(name, {}).get("z_correlation")
        lines.append(
            f"| {name} ({e['params']['heterogeneity']}) | {e['z_correlation']:.4f} | "
            f"{'' if floor is None else f'{floor:.4f}'} | {e['g_correlation']:.4f} | "
            f"{e['tau2_correlation']:.3f} | {e['i2_correlation']:.3f} | "
            f"{e['n_clusters_found']}/{len(e['clusters'])} | "
            f"{e['max_abs_dz_at_sdm_peaks']:.3f} |")
    lines += ["", "Noise floor: the same run under two seeds: " + "; ".join(
        f"{k}: r(z) = {v['z_correlation']:.4f}, max |dz| = {v['z_max_abs_diff']:.3f}"
        for k, v in nf.items()), "",
        "Targets: " + ", ".join(f"{k} {v}" for k, v in report["targets"].items()) + "; met: "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["checks"].items()), "",
        report["kernel_note"], "", report["not_run"], "", "## Consistency of SDM's own maps", ""]
    lines += [f"- {k}: {v:.3g}" for k, v in report["t5_sdm_maps"].items()]
    for name, e in report["runs"].items():
        gm = e["at_global_max"]
        lines += ["", f"## {name}", "",
                  f"- g: r = {e['g_correlation']:.4f}, max |diff| = {e['g_max_abs_diff']:.4f}, "
                  f"mean diff = {e['g_mean_diff']:.4f}",
                  f"- SDM-Z: r = {e['z_correlation']:.4f}, max |diff| = "
                  f"{e['z_max_abs_diff']:.3f}, mean diff = {e['z_mean_diff']:.3f}",
                  f"- at {tuple(gm['mni'])}: " + ", ".join(
                      f"{k} {gm['ours'][k]:.4g} (SDM {gm['sdm'][k]:.4g})" for k in gm["ours"]),
                  "",
                  "| SDM peak | SDM-Z | our z there | nearest local max (mm) | its z | found |",
                  "|---|---|---|---|---|---|"]
        for c in e["clusters"]:
            lines.append(f"| {c['x']},{c['y']},{c['z']} | {c['sdm_z']:.3f} | "
                         f"{c['our_z_at_peak']:.3f} | {c['nearest_local_max_mm']:.1f} | "
                         f"{c['nearest_local_max_z']:.3f} | "
                         f"{'yes' if c['found_within_mm'] else 'no'} |")
        lines.append(f"\nTimings (s): {e['timings_s']}")
    return "\n".join(lines) + "\n"


def run_command(args: argparse.Namespace) -> int:
    from analysis import paths

    out = args.out or (paths.results_dir() / "validation" / "sdm")
    report = run_validation(out, args.imputations, args.mode, args.seed, args.n_jobs,
                            reml=not args.no_reml)
    for name, e in report["runs"].items():
        print(f"{name}: r(z) = {e['z_correlation']:.4f}, r(tau2) = {e['tau2_correlation']:.3f}, "
              f"clusters within 4 mm {e['n_clusters_found']}/{len(e['clusters'])}")
    for name, v in report["noise_floor"].items():
        print(f"noise floor {name}: r(z) = {v['z_correlation']:.4f}, "
              f"max |dz| = {v['z_max_abs_diff']:.3f}")
    print(f"wrote {out}")
    return 0
