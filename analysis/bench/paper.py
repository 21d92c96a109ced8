"""The ``paper`` benchmark: ``make paper`` after the environment exists, stage by stage.

Runs ``python -m analysis run`` into an empty results folder (no cached stage is reused) and
then ``python -m analysis render`` into a temporary folder (the repository's ``_manuscript/`` is
left as it is), each in a child process, and reports the wall time of each,
every stage's own time (from its manifest), and the peak resident memory of the children. The
target of the compendium is 8 minutes on 2 cores; the ratio to it is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis.bench import register

#: the end-to-end target (seconds) on 2 cores, environment excluded
TARGET_SECONDS = 480.0


def stage_seconds(results: Path) -> dict:
    """Seconds of every stage recorded in ``results/.stages/<stage>.json``."""
    out = {}
    for manifest in sorted((results / ".stages").glob("*.json")):
        record = json.loads(manifest.read_text(encoding="utf-8"))
        if "seconds" in record:
            out[manifest.stem] = float(record["seconds"])
    return out


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - t0


@register("paper", "make paper from an empty results folder: every stage and the render")
def bench_paper(args: argparse.Namespace) -> dict:
    quick = bool(getattr(args, "paper_quick", False))
    with tempfile.TemporaryDirectory(prefix="paper-bench-") as tmp:
        results = Path(tmp) / "results"
        env = dict(os.environ, PAINEMP_RESULTS_DIR=str(results))
        run = [sys.executable, "-m", "analysis", "run"] + (["--quick"] if quick else [])
        t_run = _timed(run, env)
        t_render = _timed([sys.executable, "-m", "analysis", "render", "--output-dir",
                           str(Path(tmp) / "_manuscript")], env)
        stages = stage_seconds(results)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    total = t_run + t_render
    metrics = {"mode": "quick" if quick else "full", "cpus": os.cpu_count(),
               "run_seconds": round(t_run, 1), "render_seconds": round(t_render, 1),
               "total_seconds": round(total, 1), "peak_rss_children_gb": round(rss, 2)}
    metrics.update({f"stage_{k}_seconds": round(v, 1) for k, v in stages.items()})
    return {"metrics": metrics,
            "ratios": {"total_over_8_min_target": round(total / TARGET_SECONDS, 2)},
            "notes": ["child processes: the environment already exists; no stage cache is "
                      "reused (empty results folder); the manuscript is rendered into a "
                      "temporary folder"]}
