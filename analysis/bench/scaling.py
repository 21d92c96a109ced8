"""Scaling with the number of studies: the meta fit and the PSI permutations of synthetic SDM
projects of 10 to 500 studies, stage by stage, time and peak memory.

Registered in ``python -m analysis bench`` as ``scaling``. For every size ``k`` of
``--scaling-studies`` it writes a synthetic SDM-PSI project folder (``k`` studies of patients
and controls, ``--scaling-peaks`` peaks each at random voxels of the analysis mask, random t
values beyond the study's threshold: simulated numbers, no study of the literature) and runs in a
child process what ``python -m analysis meta --permutations P`` runs (the configured
:class:`analysis.sdm.SDMPSI` fit, then
:func:`analysis.sdm.inference.permutation.psi_permutation_test`), after an untimed warm-up on
three of the studies that compiles or loads every numba kernel. The child reports its stage
times (pre-processing, MetaNSUE MLE, imputation, pooling, PSI set-up and permutations); its own
peak resident memory comes from ``wait4``.

Full counts (50 imputations, 1,000 permutations) take hours at 200 studies and more on a
small machine, so the counts measured (``--scaling-imputations``, default 2, and
``--scaling-permutations``, default 41) may be smaller than the counts reported
(``--scaling-target-imputations``, ``--scaling-target-permutations``):
then every size runs twice, at ``m`` and ``5 m`` imputations (at most the target), and

* the imputation and pooling times and the time per permutation are extrapolated along the
  line through the two runs (a fixed part, e.g. the TFCE of every permuted map, plus a part
  proportional to the imputations: every permutation refits every imputation), the
  permutations in proportion to their number; pre-processing, the MLE and the PSI set-up do
  not depend on the imputations;
* the peak memory at the target count is the ``5 m`` run's plus, for every further
  imputation, the bytes of one more imputed map of every study held twice (the imputations and
  their voxel-blocked copy, :func:`psi_array_bytes`); the growth measured between the two runs
  is reported beside this model's, as its check (at small sizes it is lost in the noise of the
  fixed memory);
* the bytes of all the arrays the PSI holds at the target counts (imputations and their
  voxel-blocked copy, subject images, bound maps) say what must be chunked where memory runs
  out.

Projects above ``--scaling-max-run-studies`` (default 200), or whose PSI arrays would not fit
in 80 % of the machine's memory, are not run; their memory model is still reported.
Extrapolated cells are marked ``~`` in ``scaling.md`` and the notes say so. The table
(``scaling.md``, ready for the README) and the plot (``scaling.png``: seconds and GB against
studies, log-log, with a line of slope one for linear growth) go into the bench folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.bench import register

LGR = logging.getLogger(__name__)

#: sizes (studies) of the default run
STUDY_COUNTS = (10, 50, 200, 500)
#: the counts the table reports (SDM-PSI's defaults)
TARGET_IMPUTATIONS = 50
TARGET_PERMUTATIONS = 1000
#: the counts measured by default (then extrapolated): two imputation counts, 2 and 10, and
#: enough permutations to give each of two workers two chunks
MEASURED_IMPUTATIONS = 2
MEASURED_PERMUTATIONS = 41
#: the largest project run by default (larger ones are only modelled)
MAX_RUN_STUDIES = 200
#: memory every size should stay within (GB)
MEMORY_LIMIT_GB = 16.0
#: stage columns of the table: (summary key, label, scales with the imputations)
STAGES = (("preprocess_s", "pre-processing", False), ("mle_s", "MLE", False),
          ("impute_s", "imputation", True), ("meta_s", "pooling", True),
          ("psi_setup_s", "PSI set-up", False), ("psi_s", "PSI permutations", True))


def synthetic_project(folder: Path, n_studies: int, n_peaks: int, mask_img,
                      rng: np.random.Generator) -> Path:
    """Write a synthetic SDM-PSI project of ``n_studies`` two-sample studies.

    Each study has 12-40 patients and 12-40 controls, the t threshold of p < 0.001
    uncorrected, and ``n_peaks`` peaks at distinct random voxels of ``mask_img`` (MNI mm) with
    a random sign and |t| between the threshold + 0.2 and 8. Simulated: for timing only.

    Parameters
    ----------
    folder : pathlib.Path
        Destination (must not hold another project).
    n_studies, n_peaks : int
        Studies, and peaks per study.
    mask_img : nibabel.Nifti1Image
        The analysis mask; the peaks lie in it.
    rng : numpy.random.Generator
        Source of every random number.

    Returns
    -------
    pathlib.Path
        The folder (:func:`analysis.sdm.inputs.project.write_sdm_project`).
    """
    from analysis.sdm.inputs.coords import t_threshold
    from analysis.sdm.inputs.project import write_sdm_project

    ijk = np.argwhere(np.asarray(mask_img.dataobj) > 0)
    xyz = ijk @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
    n1 = rng.integers(12, 41, n_studies).astype(float)
    n2 = rng.integers(12, 41, n_studies).astype(float)
    t_thr = np.round(t_threshold(0.001, n1 + n2 - 2), 2)
    names = [f"sim{i:04d}" for i in range(n_studies)]
    studies = pd.DataFrame({"study": names, "n1": n1, "n2": n2, "t_thr": t_thr,
                            "threshold_kind": "uncorrected"})
    rows = []
    for name, thr in zip(names, t_thr):
        at = xyz[rng.choice(len(xyz), n_peaks, replace=False)]
        sign = rng.choice([1, -1], n_peaks)
        t = sign * np.round(rng.uniform(thr + 0.2, 8.0, n_peaks), 2)
        for j in range(n_peaks):
            rows.append({"study": name, "peak_id": j + 1, "sign": int(sign[j]),
                         "x": int(round(at[j, 0])), "y": int(round(at[j, 1])),
                         "z": int(round(at[j, 2])), "space": "MNI", "stat_type": "t",
                         "stat_value": float(t[j]),
                         "provenance": "simulated:scaling-benchmark", "note": ""})
    return write_sdm_project(studies, pd.DataFrame(rows), folder, covariates=[])


def psi_array_bytes(n_studies: int, n_subjects: int, n_voxels: int, imputations: int) -> dict:
    """Bytes of the arrays the PSI permutation test holds at once (float32 throughout).

    Parameters
    ----------
    n_studies, n_subjects, n_voxels, imputations : int
        Studies, subjects of all studies together, voxels of the mask, imputations.

    Returns
    -------
    dict
        ``imputations`` (the ``(m, k, V)`` study maps kept by the fit), ``blocked`` (their
        voxel-blocked copy made by the permutation engine), ``subject_images`` (one
        ``(n_i, V)`` image set per study), ``bounds`` (the lower and upper bound maps) and
        ``total``, in bytes.
    """
    per_map = 4 * int(n_voxels)
    out = {"imputations": imputations * n_studies * per_map,
           "blocked": imputations * n_studies * per_map,
           "subject_images": n_subjects * per_map,
           "bounds": 2 * n_studies * per_map}
    out["total"] = sum(out.values())
    return out


def _run_child(cmd: list[str], env: dict, log: Path, timeout: float | None):
    """Run ``cmd``; (seconds, peak RSS in GB of that child alone, exit code or None if killed)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout and time.perf_counter() - t0 > timeout:
                proc.kill()
                killed = True
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return (time.perf_counter() - t0, usage.ru_maxrss / 1e6,
            None if killed else proc.returncode)


def run_child(folder: Path, mask_path: Path, imputations: int, permutations: int, seed: int,
              n_jobs: int) -> dict:
    """In the child process: warm-up, then the timed fit and PSI of the project ``folder``."""
    import nibabel as nib

    from analysis.config import load_config
    from analysis.sdm.inference.permutation import psi_permutation_test
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.stages import params

    cfg = load_config()
    dataset = SDMDataset.from_sdm_project(folder, **params.study_checks(cfg))
    mask = nib.load(str(mask_path))
    psi = {**params.psi_params(cfg), "n_jobs": n_jobs}
    # untimed warm-up: every numba kernel compiled (or loaded from numba's cache) beforehand
    warm = params.estimator(cfg, 2, seed, n_jobs=n_jobs).fit(
        dataset.subset(dataset.ids[:3]), mask_img=mask)
    psi_permutation_test(warm, n_permutations=3, seed=seed, **psi)
    del warm
    res = params.estimator(cfg, imputations, seed, n_jobs=n_jobs).fit(dataset, mask_img=mask)
    perm = psi_permutation_test(res, n_permutations=permutations, seed=seed, **psi)
    return {**{k: float(v) for k, v in res.timings.items()},
            "psi_setup_s": float(perm.info["seconds_setup"]),
            "psi_s": float(perm.info["seconds_permutations"]),
            "voxels": int(res.space.n_voxels), "studies": len(res.studies)}


def _measure(folder: Path, mask_path: Path, imputations: int, permutations: int, seed: int,
             n_jobs: int, timeout: float | None, work: Path) -> dict:
    out = work / f"timings_m{imputations}.json"
    cmd = [sys.executable, "-m", "analysis.bench.scaling", str(folder), str(mask_path),
           str(imputations), str(permutations), str(seed), str(n_jobs), str(out)]
    log = work / f"child_m{imputations}.log"
    seconds, rss, code = _run_child(cmd, dict(os.environ), log, timeout)
    rec = {"imputations": imputations, "permutations": permutations,
           "wall_s": round(seconds, 1), "peak_rss_gb": round(rss, 2)}
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        rec["failed"] = (f"stopped after {timeout:.0f} s" if code is None
                         else f"exit {code}: {' | '.join(tail)}")
        return rec
    rec.update(json.loads(out.read_text()))
    return rec


def _at_target(runs: list[dict], key: str, scales: bool, m_target: int, p_target: int) -> float:
    """A stage's seconds at the target counts from runs at smaller ones.

    Stages that do not depend on the imputations: the last run's value. The others: along the
    line through the two runs' values (per permutation for the PSI), its slope at least 0
    (noise), then times the permutations.
    """
    last = runs[-1]

    def value(run):
        per = max(run["permutations"] - 1, 1) if key == "psi_s" else 1
        return run[key] / per

    v = value(last)
    if scales and len(runs) == 2:
        first = runs[0]
        slope = max((v - value(first)) / (last["imputations"] - first["imputations"]), 0.0)
        v += slope * (m_target - last["imputations"])
    elif scales:
        v *= m_target / last["imputations"]
    return v * (p_target - 1) if key == "psi_s" else v


def _fmt(value, approx: bool, digits: int = 1) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return f"~{text}" if approx else text


def scaling_table(rows: list[dict], m_target: int, p_target: int) -> str:
    """The README table (Markdown) of :func:`bench_scaling`'s rows."""
    head = ["studies", "voxels"] + [label for _, label, _ in STAGES] + [
        f"meta total ({m_target} imp.)", f"PSI ({p_target:,} perm.)",
        "peak RSS measured (GB)", f"peak RSS at {m_target} imp. (GB)",
        f"PSI arrays at {m_target} imp. (GB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "stages_s" not in r:
            lines.append(f"| {r['studies']} | {r['voxels']:,} | "
                         + " | ".join(["-"] * (len(head) - 3))
                         + f" | {_fmt(r['psi_arrays_target_gb'], False, 2)} |")
            continue
        ex = r["extrapolated"]
        cells = [str(r["studies"]), f"{r['voxels']:,}"]
        cells += [_fmt(r["stages_s"][key], ex and scales) for key, _, scales in STAGES]
        cells += [_fmt(r["meta_total_s"], ex), _fmt(r["psi_total_s"], ex),
                  _fmt(r["peak_rss_measured_gb"], False, 2),
                  _fmt(r["peak_rss_target_gb"], ex, 2), _fmt(r["psi_arrays_target_gb"], False, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def growth_exponents(rows: list[dict], key: str) -> dict:
    """log-log slope of ``key`` between consecutive sizes (1: linear in studies)."""
    pts = [(r["studies"], r[key]) for r in rows if r.get(key)]
    return {f"{a[0]}->{b[0]}": round(float(np.log(b[1] / a[1]) / np.log(b[0] / a[0])), 2)
            for a, b in zip(pts, pts[1:]) if a[1] > 0 and b[1] > 0}


def scaling_plot(rows: list[dict], path: Path, m_target: int, p_target: int,
                 extrapolated: bool) -> Path:
    """Seconds per stage and peak memory against the number of studies (log-log PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.sdm.inputs.io import atomic_path

    done = [r for r in rows if "stages_s" in r]
    k = np.array([r["studies"] for r in done], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    series = [("pre-processing", "preprocess_s"), ("MLE", "mle_s")]
    for label, key in series:
        ax1.plot(k, [r["stages_s"][key] for r in done], "o-", label=label)
    ax1.plot(k, [r["stages_s"]["impute_s"] + r["stages_s"]["meta_s"] for r in done], "o-",
             label=f"imputation + pooling ({m_target} imp.)")
    ax1.plot(k, [r["psi_total_s"] for r in done], "o-",
             label=f"PSI ({p_target:,} perm. x {m_target} imp.)")
    if len(k):
        total0 = done[0]["meta_total_s"] + done[0]["psi_total_s"]
        ax1.plot(k, total0 * k / k[0], "k--", lw=1, label="linear in studies")
    ax1.set(xscale="log", xlabel="studies", ylabel="seconds",
            title="time per stage" + (" (extrapolated counts)" if extrapolated else ""))
    if done:
        ax1.set_yscale("log")
        ax1.legend(fontsize=7)
    else:
        ax1.text(0.5, 0.5, "no size completed", ha="center", transform=ax1.transAxes)
    ax2.plot(k, [r["peak_rss_measured_gb"] for r in done], "o-",
             label=f"measured ({done[0]['measured_imputations'] if done else '?'} imp.)")
    ax2.plot(k, [r["peak_rss_target_gb"] for r in done], "s--",
             label=f"at {m_target} imp." + (" (extrapolated)" if extrapolated else ""))
    ax2.plot([r["studies"] for r in rows], [r["psi_arrays_target_gb"] for r in rows], "^:",
             label=f"PSI arrays at {m_target} imp. (model)")
    ax2.axhline(MEMORY_LIMIT_GB, color="grey", lw=1, label=f"{MEMORY_LIMIT_GB:.0f} GB")
    ax2.set(xscale="log", yscale="log", xlabel="studies", ylabel="GB",
            title="peak resident memory")
    ax2.legend(fontsize=7)
    ticks = [r["studies"] for r in rows]
    for ax in (ax1, ax2):
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


@register("scaling", "meta fit and PSI of synthetic SDM projects of 10-500 studies: time per "
          "stage and peak memory against the number of studies (table and plot)")
def bench_scaling(args: argparse.Namespace) -> dict:
    import nibabel as nib

    from analysis import paths
    from analysis.config import load_config
    from analysis.grid import gm_mask
    from analysis.sdm.inputs.io import write_text
    from analysis.sdm.maps.space import MaskSpace
    from analysis.sdm.rng import derive_rng

    cfg = load_config()
    sizes = [int(s) for s in str(getattr(args, "scaling_studies", None)
                                 or ",".join(map(str, STUDY_COUNTS))).split(",") if s.strip()]
    n_peaks = int(getattr(args, "scaling_peaks", 10) or 10)
    m_target = int(getattr(args, "scaling_target_imputations", None) or TARGET_IMPUTATIONS)
    p_target = int(getattr(args, "scaling_target_permutations", None) or TARGET_PERMUTATIONS)
    m = min(int(getattr(args, "scaling_imputations", 0) or MEASURED_IMPUTATIONS), m_target)
    p = min(int(getattr(args, "scaling_permutations", 0) or MEASURED_PERMUTATIONS), p_target)
    p = max(p, 2)
    m = max(m, 2)  # Rubin's rules need two imputations
    timeout = float(getattr(args, "scaling_timeout", 0) or 0) or None
    max_run = getattr(args, "scaling_max_run_studies", None)
    max_run = MAX_RUN_STUDIES if max_run is None else int(max_run)
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    n_jobs = int(getattr(args, "n_jobs", 1) or 1)
    seed = int(cfg["seed"])
    extrapolated = m < m_target or p < p_target
    # two imputation counts far enough apart that the growth per imputation is not lost in the
    # noise of a busy machine
    counts = [m, min(5 * m, m_target)] if m < m_target else [m]
    out_dir = Path(getattr(args, "out", None) or paths.results_dir() / "bench")
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-bench-") as tmp:
        tmp = Path(tmp)
        mask = gm_mask(cfg["sdm"]["mask"])
        n_voxels = MaskSpace(mask).n_voxels
        mask_path = tmp / "mask.nii.gz"
        nib.save(mask, str(mask_path))
        for k in sizes:
            work = tmp / f"k{k}"
            folder = synthetic_project(work / "project", k, n_peaks, mask,
                                       derive_rng(seed, f"bench/scaling/{k}"))
            st = pd.read_csv(folder / "sdm_table.txt", sep="\t")
            n_subjects = int(st["n1"].sum() + st["n2"].sum())
            arrays = psi_array_bytes(k, n_subjects, n_voxels, m_target)
            model_per_imp = (arrays["imputations"] + arrays["blocked"]) / m_target / 1e9
            row = {"studies": k, "subjects": n_subjects, "voxels": n_voxels,
                   "psi_arrays_target_gb": round(arrays["total"] / 1e9, 2),
                   "psi_arrays_target_parts_gb": {n: round(b / 1e9, 2)
                                                  for n, b in arrays.items()}}
            rows.append(row)
            if max_run and k > max_run:
                row["failed"] = f"not run (above --scaling-max-run-studies {max_run})"
                continue
            need = psi_array_bytes(k, n_subjects, n_voxels, counts[-1])["total"] / 1e9
            if need > 0.8 * memory_gb:
                row["failed"] = (f"not run: its PSI arrays at {counts[-1]} imputations "
                                 f"({need:.1f} GB) exceed 80 % of this machine's memory "
                                 f"({memory_gb:.1f} GB)")
                continue
            LGR.info("scaling: %d studies (%s imputations, %d permutations)", k,
                     " and ".join(map(str, counts)), p)
            runs = []
            for c in counts:
                runs.append(_measure(folder, mask_path, c, p, seed, n_jobs, timeout, work))
                if "failed" in runs[-1]:
                    break  # more imputations would not do better
            row["runs"] = runs
            good = [r for r in runs if "failed" not in r]
            if len(good) < len(runs):
                row["failed"] = next(r["failed"] for r in runs if "failed" in r)
            if good:
                last = good[-1]
                stages = {key: round(_at_target(good, key, scales, m_target, p_target), 2)
                          for key, _, scales in STAGES}
                rss = last["peak_rss_gb"]
                per_imp = None if len(good) < 2 else (
                    good[1]["peak_rss_gb"] - good[0]["peak_rss_gb"]) / (
                    good[1]["imputations"] - good[0]["imputations"])
                rss_target = rss + model_per_imp * (m_target - last["imputations"])
                row.update({
                    "extrapolated": extrapolated,
                    "measured_imputations": last["imputations"], "stages_s": stages,
                    "meta_total_s": round(sum(stages[s] for s in ("preprocess_s", "mle_s",
                                                                  "impute_s", "meta_s")), 1),
                    "psi_total_s": round(stages["psi_setup_s"] + stages["psi_s"], 1),
                    "peak_rss_measured_gb": rss,
                    "rss_growth_per_imputation_gb": None if per_imp is None
                    else round(per_imp, 3),
                    "model_growth_per_imputation_gb": round(model_per_imp, 3),
                    "peak_rss_target_gb": round(rss_target, 2)})
    done = [r for r in rows if "stages_s" in r]
    table = scaling_table(rows, m_target, p_target)
    notes = [f"synthetic SDM projects: {n_peaks} peaks a study at random voxels of the "
             f"analysis mask ({cfg['sdm']['mask']}), random t values; simulated, for timing "
             "only",
             f"{n_jobs} worker(s) for the pooling and the permutations (chunks of "
             f"{int(cfg['sdm']['psi']['chunk_size'])} permutations: measure at least "
             f"{2 * n_jobs * int(cfg['sdm']['psi']['chunk_size']) + 1} to keep them busy); "
             "times from the child process after an untimed warm-up that compiles the kernels; "
             "peak RSS of each child alone (wait4), warm-up included"]
    if extrapolated:
        notes.append(
            f"EXTRAPOLATED: measured at {' and '.join(map(str, counts))} imputations and {p} "
            f"permutations, reported at {m_target} and {p_target:,}: imputation, pooling and "
            "per-permutation times extrapolated linearly in the imputations from the two runs "
            "(and in the permutations); pre-processing, MLE and PSI set-up as measured; peak "
            "memory at the target count: the measured peak plus two float32 maps a study per "
            "further imputation (the imputations and their voxel-blocked copy; growth measured "
            "between the two runs in bench.json); cells marked ~ in scaling.md")
    over = [r["studies"] for r in rows if r["psi_arrays_target_gb"] > MEMORY_LIMIT_GB]
    if over:
        worst = max(rows, key=lambda r: r["studies"])
        parts = ", ".join(f"{n} {v} GB" for n, v in worst["psi_arrays_target_parts_gb"].items())
        notes.append(
            f"memory: at {m_target} imputations the PSI arrays of {over} studies exceed "
            f"{MEMORY_LIMIT_GB:.0f} GB ({worst['studies']} studies: {parts}); keeping them "
            "within it needs (1) the fit to impute and pool one imputation at a time (today "
            "all (m, k, V) imputed maps exist at once), (2) the imputations not held twice "
            "(the engine's voxel-blocked copy beside the result's), (3) the permutations run "
            "voxel block by voxel block over memory-mapped blocked imputations and subject "
            "images, keeping only each permutation's z map (4 bytes a voxel a permutation) "
            "for the TFCE and the maxima")
    failed = [f"{r['studies']} studies: {r['failed']}" for r in rows if "failed" in r]
    notes += [f"not completed: {f}" for f in failed]
    md = "\n".join([f"# Scaling with the number of studies ({m_target} imputations, "
                    f"{p_target:,} permutations)", "", table, "", *[f"- {n}" for n in notes],
                    ""])
    write_text(out_dir / "scaling.md", md)
    plot = scaling_plot(rows, out_dir / "scaling.png", m_target, p_target, extrapolated)
    metrics = {"sizes": sizes, "measured_imputations": counts, "measured_permutations": p,
               "target_imputations": m_target, "target_permutations": p_target,
               "rows": rows, "table_md": str(out_dir / "scaling.md"), "plot": str(plot)}
    ratios = {f"growth_exponent_{key}": growth_exponents(
        [{"studies": r["studies"], key: r["stages_s"][key]} for r in done], key)
        for key in ("preprocess_s", "mle_s", "impute_s", "psi_s")}
    ratios["growth_exponent_peak_rss"] = growth_exponents(done, "peak_rss_target_gb")
    return {"metrics": metrics, "ratios": ratios,
            "notes": notes + ["growth exponents: log-log slope of seconds (or GB) against "
                              "studies between consecutive sizes; 1 is linear"]}


if __name__ == "__main__":  # the child process of :func:`_measure`
    _folder, _mask, _m, _p, _seed, _jobs, _out = sys.argv[1:8]
    from analysis.io import write_json

    write_json(Path(_out), run_child(Path(_folder), Path(_mask), int(_m), int(_p), int(_seed),
                                     int(_jobs)))
