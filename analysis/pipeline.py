"""Stage runner: every artefact under ``results/`` has exactly one producing stage.

A stage is a function ``produce(ctx) -> dict`` that writes its files through ``ctx.out(...)``
(into a private staging directory) and returns the numbers it contributes to
``results/values.json``. Only when the stage finishes are its files moved into ``results/``
(each with :func:`os.replace`), followed by its manifest; a failing stage leaves ``results/``
untouched. A stage whose manifest matches its inputs (configuration, data files, package source,
upstream stages) and whose outputs are intact is reused, not recomputed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis import __version__, paths
from analysis.config import derive_rng, load_config
from analysis.io import sha256_file, write_json

LGR = logging.getLogger(__name__)


@dataclass
class Stage:
    """One producer of results.

    Parameters
    ----------
    name : str
        Stage name (also the name of its random stream and manifest).
    target : str
        ``"module:function"`` producing the stage.
    inputs : list of str
        Files of the data directory the stage reads (hashed for caching).
    depends : list of str
        Upstream stages whose outputs it reads.
    sources : list of str
        Package paths (files or folders, relative to ``analysis/``) whose code decides its result;
        empty (the default): every package module the target imports, transitively
        (:func:`module_closure`).
    """

    name: str
    target: str
    inputs: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def function(self) -> Callable[[Context], dict]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


# The registry: the one place that says which stage produces what.
STAGES: list[Stage] = [
    # Tables 1-2 and the sample numbers of the text
    Stage("tables", "analysis.tables:produce", inputs=["studies.tsv", "peaks.tsv", "published_values.tsv"]),
    # Figure 1 (PRISMA 2020 flowchart)
    Stage("figure1", "analysis.figures.prisma:produce", inputs=["prisma.yaml"]),
    # SDM-PSI mean analysis: maps, Table 3, Figure 2, funnel plots, published-vs-reproduced
    Stage("meta", "analysis.sdm.stage:produce",
          inputs=["studies.tsv", "peaks.tsv", "published_table3.tsv"]),
    # PSI permutations (FWE/TFCE), jackknife, meta-regression, subgroups
    Stage("robustness", "analysis.sdm.robustness_stage:produce",
          inputs=["studies.tsv", "peaks.tsv"], depends=["meta"]),
    # MACM, connectivity, conjunctions, decoding: Figures 3-4
    Stage("characterisation", "analysis.characterisation.stage:produce", depends=["meta"]),
]


@dataclass
class Context:
    """What a stage sees: configuration, inputs, where to write, its random stream."""

    stage: str
    config: dict[str, Any]
    data_dir: Path
    results_dir: Path
    staging: Path
    quick: bool = False

    def out(self, relpath: str) -> Path:
        """Path (in the staging area) at which to write ``results/<relpath>``."""
        path = self.staging / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def result(self, relpath: str) -> Path:
        """Path of an upstream stage's output ``results/<relpath>``."""
        return self.results_dir / relpath

    def rng(self, name: str = "") -> np.random.Generator:
        """Random generator derived from the one seed, this stage and an optional sub-name."""
        return derive_rng(self.config["seed"], f"{self.stage}/{name}" if name else self.stage)


_MODULE_NAME = re.compile(r"^analysis(\.[A-Za-z_]\w*)*$")


def _module_file(name: str) -> Path | None:
    """File of package module ``analysis.a.b`` (``a/b.py`` or ``a/b/__init__.py``), if any."""
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    for cand in (paths.PACKAGE_DIR / rel.with_suffix(".py") if rel.parts else None,
                 paths.PACKAGE_DIR / rel / "__init__.py"):
        if cand is not None and cand.is_file():
            return cand
    return None


def _referenced_modules(path: Path) -> set[str]:
    """Package modules a file names: ``import``/``from ... import`` statements anywhere (also
    inside functions), names imported from a package that are themselves modules, and string
    constants that spell a module (``importlib.import_module("analysis.x")``, stage targets).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value.split(":")[0])
    return {m for m in found if _MODULE_NAME.match(m) and _module_file(m) is not None}


def module_closure(module: str) -> list[Path]:
    """Files of every package module ``module`` reaches through imports (with parent packages'
    ``__init__``), i.e. the code that can decide a stage's result.
    """
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            parent = ".".join(parts[:i])
            if parent not in seen and _module_file(parent) is not None:
                seen.add(parent)
                todo.extend(_referenced_modules(_module_file(parent)) - seen)
    return sorted({_module_file(m) for m in seen})


def _source_hash(stage: Stage) -> str:
    """Hash of the code behind a stage: its ``sources`` when given, else the import closure of
    its target module (so editing the renderer does not invalidate the permutation stage).
    The configuration enters the stage key as parsed values, not as the file's text.
    """
    h = hashlib.sha256(__version__.encode())
    if stage.sources:
        files: list[Path] = []
        for rel in stage.sources:
            p = paths.PACKAGE_DIR / rel
            files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    else:
        files = module_closure(stage.target.split(":")[0])
        if paths.PACKAGE_DIR / "fetch.py" in files:  # the dataset registry decides the inputs
            files.append(paths.PACKAGE_DIR / "datasets.tsv")
    for f in files:
        if f.exists():
            h.update(str(f.relative_to(paths.PACKAGE_DIR)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def stage_key(stage: Stage, ctx_cfg: dict, data_dir: Path, quick: bool, upstream: dict) -> str:
    """Hash of everything a stage's outputs depend on."""
    h = hashlib.sha256()
    h.update(json.dumps(ctx_cfg, sort_keys=True).encode())
    h.update(str(bool(quick)).encode())
    for rel in stage.inputs:
        f = data_dir / rel
        h.update(rel.encode())
        h.update(sha256_file(f).encode() if f.exists() else b"missing")
    h.update(_source_hash(stage).encode())
    for dep in stage.depends:
        h.update(upstream.get(dep, "").encode())
    return h.hexdigest()


def _manifest_path(results: Path, name: str) -> Path:
    return results / ".stages" / f"{name}.json"


def _cached(results: Path, name: str, key: str) -> dict | None:
    mpath = _manifest_path(results, name)
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("key") != key:
        return None
    for rel, digest in manifest.get("outputs", {}).items():
        f = results / rel
        if not f.exists() or sha256_file(f) != digest:
            return None
    return manifest


def run_stages(
    names: list[str] | None = None,
    quick: bool = False,
    force: bool = False,
    config: dict | None = None,
    data_dir: Path | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Run (or reuse) the requested stages and their upstream stages; merge ``values.json``.

    Returns
    -------
    dict
        ``{stage: "ran" | "cached"}``.
    """
    cfg = config or load_config()
    data = Path(data_dir or paths.data_dir())
    results = Path(results_dir or paths.results_dir())
    wanted = set(names or [s.name for s in STAGES])
    by_name = {s.name: s for s in STAGES}
    unknown = wanted - set(by_name)
    if unknown:
        raise KeyError(f"unknown stage(s): {sorted(unknown)}; known: {sorted(by_name)}")
    # close over dependencies
    todo = set()
    stack = list(wanted)
    while stack:
        n = stack.pop()
        if n not in todo:
            todo.add(n)
            stack.extend(by_name[n].depends)
    keys: dict[str, str] = {}
    status: dict[str, str] = {}
    for stage in STAGES:
        if stage.name not in todo:
            continue
        key = stage_key(stage, cfg, data, quick, keys)
        keys[stage.name] = key
        if not force and _cached(results, stage.name, key):
            LGR.info("stage %s: outputs up to date, reused", stage.name)
            status[stage.name] = "cached"
            continue
        status[stage.name] = _run_one(stage, key, cfg, data, results, quick)
    merge_values(results)
    return status


def _run_one(stage: Stage, key: str, cfg: dict, data: Path, results: Path, quick: bool) -> str:
    staging = results / ".staging" / f"{stage.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    ctx = Context(stage.name, cfg, data, results, staging, quick)
    t0 = time.perf_counter()
    LGR.info("stage %s: running", stage.name)
    try:
        values = stage.function()(ctx) or {}
        write_json(staging / "values" / f"{stage.name}.json", values)
        outputs = {}
        for f in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = f.relative_to(staging).as_posix()
            outputs[rel] = sha256_file(f)
        for rel in outputs:
            dest = results / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, dest)
        write_json(
            _manifest_path(results, stage.name),
            {"stage": stage.name, "key": key, "quick": quick, "outputs": outputs,
             "seconds": round(time.perf_counter() - t0, 3)},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            (results / ".staging").rmdir()
        except OSError:
            pass
    LGR.info("stage %s: done in %.1f s", stage.name, time.perf_counter() - t0)
    return "ran"


def merge_values(results: Path) -> dict:
    """Merge every stage's ``values/<stage>.json`` into ``results/values.json`` (atomic)."""
    merged: dict[str, Any] = {}
    vdir = results / "values"
    for stage in STAGES:
        f = vdir / f"{stage.name}.json"
        if f.exists():
            merged[stage.name] = json.loads(f.read_text())
    if merged:
        write_json(results / "values.json", merged)
    return merged
