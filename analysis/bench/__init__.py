"""Speed and memory benchmarks, as ratios measured in the same run (``python -m analysis bench``).

A benchmark is a function ``(args) -> dict`` registered with :func:`register`; it returns
``{"metrics": {...}, "ratios": {...}, "notes": [...]}``. The command runs the selected
benchmarks (all by default) and writes ``bench.json`` and ``bench.md`` into ``--out``
(default ``results/bench``). Other modules add their own benchmarks with::

    from analysis.bench import register

    @register("name", "one-line description")
    def bench_name(args): ...

(the module that defines them must be listed in :data:`BENCH_MODULES`).
Every ratio compares timings taken in the same process on the same machine; extrapolated or
scaled timings are labelled as such in ``notes``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path

from analysis import paths
from analysis.io import write_json
from analysis.sdm.inputs.io import write_text

LGR = logging.getLogger(__name__)

#: name -> (function, description)
BENCHMARKS: dict[str, tuple[Callable[[argparse.Namespace], dict], str]] = {}
#: modules imported before running: their ``@register`` calls take effect, and a module-level
#: ``BENCHMARKS`` dict of zero-argument callables returning measurements is adopted as is
BENCH_MODULES: list[str] = ["analysis.bench.psi", "analysis.bench.sdm_fit",
                              "analysis.bench.characterisation_macm", "analysis.bench.calibration",
                              "analysis.bench.paper", "analysis.bench.design_replicates",
                              "analysis.bench.ibma", "analysis.bench.mixed_maps",
                              "analysis.bench.scaling", "analysis.bench.replicate_parts"]


def register(name: str, description: str):
    """Decorator adding a benchmark to :data:`BENCHMARKS`."""
    def deco(func):
        BENCHMARKS[name] = (func, description)
        return func
    return deco


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB; Linux ``ru_maxrss`` is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _markdown(report: dict) -> str:
    lines = ["# Benchmarks", "", f"Machine: {report['machine']}", ""]
    for name, r in report["benchmarks"].items():
        lines += [f"## {name}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r.get("metrics", {}).items()]
        if r.get("ratios"):
            lines += ["", "| ratio (same run) | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in r["ratios"].items()]
        lines += [""] + [f"- {n}" for n in r.get("notes", [])] + [""]
    return "\n".join(lines)


def _adopt(module) -> None:
    """Register the zero-argument benchmarks of a module's own ``BENCHMARKS`` dict."""
    table = getattr(module, "BENCHMARKS", None)
    if table is None or table is BENCHMARKS:
        return
    for name, func in table.items():
        if name not in BENCHMARKS:
            BENCHMARKS[name] = (lambda args, f=func: {"metrics": f()},
                                f"{module.__name__}: {name}")




def run_benchmarks(args) -> int:
    """Run the benchmarks selected by ``args`` (``--only``/``--list``/``--out`` and the sizes of
    :mod:`analysis.commands.bench`), write ``bench.json`` and ``bench.md``; exit status.
    """
    for mod in BENCH_MODULES:
        try:
            _adopt(importlib.import_module(mod))
        except ImportError as exc:
            LGR.warning("benchmarks of %s unavailable: %s", mod, exc)
    if args.list:
        for name, (_, desc) in BENCHMARKS.items():
            print(f"{name}: {desc}")
        return 0
    names = args.only or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s): {sorted(unknown)}; known: {sorted(BENCHMARKS)}")
        return 2
    import os

    report = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} logical CPUs, Python {platform.python_version()}",
              "benchmarks": {}}
    for name in names:
        LGR.info("benchmark %s", name)
        t0 = time.perf_counter()
        res = BENCHMARKS[name][0](args)
        res["seconds_total"] = round(time.perf_counter() - t0, 1)
        report["benchmarks"][name] = res
    out = Path(args.out or paths.results_dir() / "bench")
    write_json(out / "bench.json", report)
    write_text(out / "bench.md", _markdown(report))
    print(json.dumps(report, indent=1, default=str))
    return 0
