"""Stage runner: every artefact under ``results/`` has exactly one producing stage.

A stage is a function ``produce(ctx) -> dict`` that writes its files through ``ctx.out(...)``
(into a private staging directory) and returns the numbers it contributes to
``results/values.json``. A stage whose manifest matches its inputs (configuration, data files,
package source, upstream stages) and whose outputs are intact is reused, not recomputed.

Guarantees (tested in ``tests/test_reliability.py`` and ``tests/test_foundation.py``):

* **All or nothing.** Only when the stage has finished are its files committed
  (:func:`commit_stage`): the old manifest is removed first (an interrupted commit is never
  trusted), every destination folder is created and checked writable before anything moves,
  each file is moved with :func:`os.replace` keeping the file it replaces aside, and the
  manifest is written last. Any failure puts the previous files back and leaves no new file.
* **One run per results folder.** :func:`results_lock` holds ``results/.stages/run.lock``
  (``flock``) for the whole run; a second run on the same folder stops at once with
  :class:`analysis.errors.ResultsLocked`. Staging folders ``.staging/<stage>-<pid>`` left by
  killed runs are removed when a run starts.
* **Validated configuration.** The configuration is checked against the schema
  (:func:`analysis.config.validate_config`) before any stage runs; stage keys hash
  :func:`analysis.config.result_config`, i.e. without keys that cannot change a result (the
  number of parallel jobs).
* **Reproducible values.** Timings a stage returns (keys ``seconds`` or ``*_seconds`` at any
  depth, :func:`split_timings`) go to its manifest, not to ``values.json``, which is byte-identical between
  runs.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis import __version__, paths
from analysis.config import load_config, result_config, validate_config
from analysis.errors import ResultsLocked
from analysis.io import process_alive, write_json
from analysis.sdm.inputs.io import sha256_file
from analysis.sdm.rng import derive_rng

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
    Stage("tables", "analysis.stages.tables:produce", inputs=["studies.tsv", "peaks.tsv", "published_values.tsv"]),
    # Figure 1 (PRISMA 2020 flowchart)
    Stage("figure1", "analysis.stages.figure1:produce", inputs=["prisma.yaml"]),
    # SDM-PSI mean analysis: maps, Table 3, Figure 2, funnel plots, published-vs-reproduced
    Stage("meta", "analysis.stages.meta:produce",
          inputs=["studies.tsv", "peaks.tsv", "published_table3.tsv"]),
    # PSI permutations (FWE/TFCE), jackknife, meta-regression, subgroups
    Stage("robustness", "analysis.stages.robustness:produce",
          inputs=["studies.tsv", "peaks.tsv"], depends=["meta"]),
    # What can be checked without the coordinates: the design's FWE threshold (null
    # simulations), Table 3's internal consistency, the design's sensitivity
    Stage("design", "analysis.stages.design:produce",
          inputs=["studies.tsv", "peaks.tsv", "published_table3.tsv"], depends=["robustness"]),
    # MACM, connectivity, conjunctions, decoding: Figures 3-4
    Stage("characterisation", "analysis.stages.characterisation:produce", depends=["meta"]),
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


#: module-like names a file spells (:func:`_spelled_modules`) by (path, mtime in ns, size):
#: parsed again when the file changes
_REFERENCES: dict[tuple[str, int, int], frozenset[str]] = {}


def _referenced_modules(path: Path) -> set[str]:
    """Package modules a file names: ``import``/``from ... import`` statements anywhere (also
    inside functions), names imported from a package that are themselves modules, and string
    constants that spell a module (``importlib.import_module("analysis.x")``, stage targets).
    """
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _REFERENCES:
        _REFERENCES[key] = frozenset(_spelled_modules(path))
    return {m for m in _REFERENCES[key] if _module_file(m) is not None}


def _spelled_modules(path: Path) -> set[str]:
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
    return {m for m in found if _MODULE_NAME.match(m)}


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


def stage_code_files(stage: Stage) -> list[Path]:
    """The package files of a stage's code: its ``sources`` when given, else the import
    closure of its target module (:func:`module_closure`).
    """
    if stage.sources:
        files: list[Path] = []
        for rel in stage.sources:
            p = paths.PACKAGE_DIR / rel
            files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
        return files
    return module_closure(stage.target.split(":")[0])


def stage_hashed_files(stage: Stage) -> list[Path]:
    """Every file whose bytes enter a stage's code hash: :func:`stage_code_files`, the dataset
    registry when the stage can fetch, and the files a package of the stage ships in its
    ``data/`` folder (e.g. ``analysis/sdm/data/``: the fitted kernel template). A file the engine
    fetches (SDM-PSI's mask, :mod:`analysis.sdm.datasets`) enters through the module that records
    its URL and SHA-256.
    """
    files = stage_code_files(stage)
    if not stage.sources and paths.PACKAGE_DIR / "fetch.py" in files:
        files.append(paths.PACKAGE_DIR / "datasets.tsv")  # the dataset registry decides the inputs
    for folder in sorted({f.parent / "data" for f in files}):
        if folder.is_dir():
            files.extend(sorted(p for p in folder.rglob("*") if p.is_file()))
    return files


def _source_hash(stage: Stage) -> str:
    """Hash of the code behind a stage (:func:`stage_hashed_files`): its ``sources`` when
    given, else the import closure of its target module (so editing the renderer does not
    invalidate the permutation stage). The configuration enters the stage key as parsed
    values, not as the file's text.
    """
    h = hashlib.sha256(__version__.encode())
    for f in stage_hashed_files(stage):
        if f.exists():
            h.update(str(f.relative_to(paths.PACKAGE_DIR)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def stage_key(stage: Stage, ctx_cfg: dict, data_dir: Path, quick: bool, upstream: dict) -> str:
    """Hash of everything a stage's outputs depend on.

    The configuration enters without the keys that cannot change a result
    (:func:`analysis.config.result_config`: e.g. ``sdm.psi.n_jobs``).
    """
    return stage_key_parts(stage, ctx_cfg, data_dir, quick, upstream)[0]


def stage_key_parts(stage: Stage, ctx_cfg: dict, data_dir: Path, quick: bool,
                    upstream: dict) -> tuple[str, dict]:
    """:func:`stage_key` and what it is made of (recorded in the manifest).

    Returns
    -------
    key : str
    parts : dict
        ``config`` (hash of the result configuration), ``quick``, ``inputs`` (data file ->
        sha256 or ``"missing"``), ``source`` (hash of the stage's code), ``upstream`` (stage ->
        key): what :func:`check_results` compares to say *why* a stage is stale.
    """
    config_text = json.dumps(result_config(ctx_cfg), sort_keys=True)
    parts: dict[str, Any] = {
        "config": hashlib.sha256(config_text.encode()).hexdigest(), "quick": bool(quick),
        "inputs": {}, "source": _source_hash(stage),
        "upstream": {dep: upstream.get(dep, "") for dep in stage.depends}}
    h = hashlib.sha256()
    h.update(config_text.encode())
    h.update(str(bool(quick)).encode())
    for rel in stage.inputs:
        f = data_dir / rel
        digest = sha256_file(f) if f.exists() else "missing"
        parts["inputs"][rel] = digest
        h.update(rel.encode())
        h.update(digest.encode())
    h.update(parts["source"].encode())
    for dep in stage.depends:
        h.update(parts["upstream"][dep].encode())
    return h.hexdigest(), parts


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

    Raises
    ------
    analysis.errors.ConfigError
        The configuration breaks the schema (checked before any stage runs).
    analysis.errors.ResultsLocked
        Another run holds the results folder.
    """
    cfg = validate_config(config) if config is not None else load_config()
    data = Path(data_dir or paths.data_dir())
    results = Path(results_dir or paths.results_dir())
    wanted = set(names or [s.name for s in STAGES])
    by_name = {s.name: s for s in STAGES}
    unknown = wanted - set(by_name)
    if unknown:
        raise ValueError(f"unknown stage(s): {sorted(unknown)}; known: {sorted(by_name)}")
    with results_lock(results):
        clean_stale_staging(results)
        return _run_locked(wanted, by_name, cfg, data, results, quick, force)


def _run_locked(wanted, by_name, cfg, data, results, quick, force) -> dict[str, Any]:
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
    plan = [s for s in STAGES if s.name in todo]
    for pos, stage in enumerate(plan, start=1):
        where = f"stage {pos}/{len(plan)} {stage.name}"
        key, parts = stage_key_parts(stage, cfg, data, quick, keys)
        keys[stage.name] = key
        if not force and _cached(results, stage.name, key):
            LGR.info("%s: outputs up to date, reused", where)
            status[stage.name] = "cached"
            continue
        LGR.info("%s: running%s", where, " (quick)" if quick else "")
        t0 = time.perf_counter()
        status[stage.name] = _run_one(stage, key, cfg, data, results, quick, parts)
        LGR.info("%s: done in %.0f s", where, time.perf_counter() - t0)
    merge_values(results)
    return status


LOCK_FILE = "run.lock"
_STAGING_NAME = re.compile(r"^(?P<stage>.+)-(?P<pid>\d+)(\.old)?$")


@contextmanager
def results_lock(results: Path) -> Iterator[Path]:
    """Hold the exclusive lock of a results folder for the duration of a run.

    The lock is an ``flock`` on ``results/.stages/run.lock`` (released by the system when the
    process ends, also when it is killed); the file records the holder's process id.

    Raises
    ------
    analysis.errors.ResultsLocked
        Another process holds it.
    """
    lock = results / ".stages" / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (no flock on this platform: no lock)
        yield lock
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ResultsLocked(f"{results}: another run (process {holder}) is computing into "
                                f"this results folder (lock {lock}); wait for it to finish or "
                                "use another results folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clean_stale_staging(results: Path) -> list[str]:
    """Remove ``results/.staging/<stage>-<pid>`` folders whose process no longer runs.

    Returns
    -------
    list of str
        Names of the removed folders.
    """
    root = results / ".staging"
    removed = []
    if not root.is_dir():
        return removed
    for d in sorted(root.iterdir()):
        m = _STAGING_NAME.match(d.name)
        if m and int(m.group("pid")) != os.getpid() and process_alive(int(m.group("pid"))):
            continue
        shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
        removed.append(d.name)
        LGR.info("removed stale staging folder %s", d)
    try:
        root.rmdir()
    except OSError:
        pass
    return removed


def _is_timing(key: str) -> bool:
    return key == "seconds" or key.endswith("_seconds")


def split_timings(values: dict, prefix: str = "") -> tuple[dict, dict]:
    """Separate the timings from a stage's values, at any depth.

    A key ``seconds`` or ``*_seconds`` is a timing wherever it is (``published.seconds`` of
    stage ``characterisation`` as much as a top-level ``psi_seconds``): wall-clock times differ
    between runs, so they go to the stage's manifest and ``values.json`` stays byte-identical.

    Parameters
    ----------
    values : dict
        What a stage returned.
    prefix : str
        Dotted path of ``values`` within the stage's values (recursion).

    Returns
    -------
    values : dict
        A copy of ``values`` without timings.
    timings : dict
        ``dotted key -> value`` of every timing removed.
    """
    kept: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for key, val in values.items():
        path = f"{prefix}{key}"
        if isinstance(key, str) and _is_timing(key):
            timings[path] = val
        elif isinstance(val, dict):
            kept[key], sub = split_timings(val, f"{path}.")
            timings.update(sub)
        else:
            kept[key] = val
    return kept, timings


def commit_stage(staging: Path, results: Path, outputs: dict[str, str], manifest: dict) -> None:
    """Move a finished stage's files from ``staging`` into ``results``, all or none.

    The stage's previous manifest is removed first; every destination folder is created and
    checked writable before any file moves; each move keeps the replaced file aside (in
    ``<staging>.old``) and any failure restores the previous files and removes the new ones.
    The manifest is written last.

    Parameters
    ----------
    staging : pathlib.Path
        The stage's staging folder (``results/.staging/<stage>-<pid>``).
    results : pathlib.Path
        The results folder.
    outputs : dict
        ``relative path -> sha256`` of the files in ``staging``.
    manifest : dict
        The manifest written to ``results/.stages/<stage>.json`` once every file is in place.

    Raises
    ------
    OSError
        A destination cannot be created or written (nothing of the stage is then in place).
    """
    mpath = _manifest_path(results, manifest["stage"])
    mpath.unlink(missing_ok=True)
    folders = sorted({(results / rel).parent for rel in outputs} | {mpath.parent})
    created: list[Path] = []
    try:
        for folder in folders:
            missing = [p for p in [folder, *folder.parents] if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            created.extend(reversed(missing))
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied (stage not committed)", str(folder))
    except OSError:
        for folder in reversed(created):  # leave no trace of the stage
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    backup = staging.with_name(staging.name + ".old")
    moved: list[tuple[str, bool]] = []  # (rel, had a previous file)
    try:
        for rel in outputs:
            dest = results / rel
            had = dest.exists()
            if had:
                (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, backup / rel)
            moved.append((rel, had))
            os.replace(staging / rel, dest)
        write_json(mpath, manifest)
    except BaseException:
        for rel, had in reversed(moved):
            dest = results / rel
            try:
                if dest.exists() and not (staging / rel).exists():
                    os.replace(dest, staging / rel)
                if had:
                    os.replace(backup / rel, dest)
            except OSError:  # pragma: no cover (best effort; the manifest is gone anyway)
                LGR.error("could not restore %s", dest)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _run_one(stage: Stage, key: str, cfg: dict, data: Path, results: Path, quick: bool,
             parts: dict | None = None) -> str:
    staging = results / ".staging" / f"{stage.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    ctx = Context(stage.name, cfg, data, results, staging, quick)
    started = _utc_now()
    t0 = time.perf_counter()
    LGR.info("stage %s: running", stage.name)
    try:
        values, timings = split_timings(dict(stage.function()(ctx) or {}))
        write_json(staging / "values" / f"{stage.name}.json", values)
        outputs = {}
        for f in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = f.relative_to(staging).as_posix()
            outputs[rel] = sha256_file(f)
        timings["seconds"] = round(time.perf_counter() - t0, 3)
        commit_stage(staging, results, outputs,
                     {"stage": stage.name, "key": key, "quick": quick, "outputs": outputs,
                      "parts": parts or {}, "seconds": timings["seconds"], "timings": timings,
                      "provenance": provenance(stage, cfg, data, started, _utc_now())})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            (results / ".staging").rmdir()
        except OSError:
            pass
    LGR.info("stage %s: done in %.1f s", stage.name, time.perf_counter() - t0)
    return "ran"


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provenance(stage: Stage, cfg: dict, data: Path, started: str, ended: str) -> dict:
    """What a stage's manifest records of its run (read by :mod:`analysis.archive`).

    Start and end time (UTC), the data files it read with their SHA-256, the upstream stages,
    the package files of its code (:func:`module_closure` or ``sources``) with their SHA-256,
    and the configuration its key hashes (:func:`analysis.config.result_config`).
    """
    code = stage_code_files(stage)
    return {
        "started": started, "ended": ended, "target": stage.target,
        "inputs": {f"data/{rel}": sha256_file(data / rel) for rel in stage.inputs
                   if (data / rel).is_file()},
        "depends": list(stage.depends),
        "code": {f"analysis/{f.relative_to(paths.PACKAGE_DIR).as_posix()}": sha256_file(f)
                 for f in code if f.is_file()},
        "config": result_config(cfg),
    }


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


RUN_COMMAND = "python -m analysis run"


def recorded_config(manifests) -> dict:
    """The configuration a run recorded in its stage manifests (``provenance.config``), over
    the current one for the keys that do not change results (a run made with ``--set`` or
    ``--config`` is checked as it ran).
    """
    from analysis.config import merge

    cfg = load_config()
    for manifest in manifests:
        merge(cfg, manifest["provenance"]["config"])
    return cfg


def check_results(config: dict | None = None, data_dir: Path | None = None,
                  results_dir: Path | None = None, stages: list[str] | None = None,
                  allow_missing: bool = False) -> None:
    """Refuse results that do not belong to the current inputs, configuration and code.

    For each stage (all, or ``stages``) in pipeline order, the key that ``run`` would compute
    now (:func:`stage_key_parts`, with the ``quick`` flag the stage ran with) is compared with
    the key of its manifest, and every output is compared with the checksum the manifest
    records, exactly as ``run`` decides whether to reuse a stage (:func:`_cached`). A stage
    without a manifest but with outputs was interrupted while committing (the manifest is
    removed first and written last by :func:`commit_stage`). Finally ``values.json`` must be
    the merge of the stages' values.

    Parameters
    ----------
    config : dict, optional
        Validated configuration (default: :func:`analysis.config.load_config`).
    data_dir, results_dir : path-like, optional
        Defaults: :func:`analysis.paths.data_dir`, :func:`analysis.paths.results_dir`.
    stages : list of str, optional
        Stages to check (default: all).
    allow_missing : bool
        Accept a stage that was never computed (no manifest and no output); stale and
        half-committed stages are refused all the same.

    Raises
    ------
    analysis.errors.StaleResults
        One line naming the first stale stage, why, and the command that fixes it.
    """
    from analysis.errors import StaleResults

    cfg = validate_config(config) if config is not None else load_config()
    data = Path(data_dir or paths.data_dir())
    results = Path(results_dir or paths.results_dir())
    wanted = set(stages or [s.name for s in STAGES])
    keys: dict[str, str] = {}
    quick_any = False
    for stage in STAGES:
        mpath = _manifest_path(results, stage.name)
        manifest = None
        if mpath.exists():
            try:
                manifest = json.loads(mpath.read_text())
            except (OSError, json.JSONDecodeError):
                manifest = None
        quick = bool((manifest or {}).get("quick", quick_any))
        quick_any = quick_any or quick
        key, parts = stage_key_parts(stage, cfg, data, quick, keys)
        keys[stage.name] = key
        if stage.name not in wanted:
            continue
        fix = f"run `{RUN_COMMAND}{' --quick' if quick else ''}`"
        if manifest is None:
            partial = (results / "values" / f"{stage.name}.json").exists() or mpath.exists()
            if partial:
                raise StaleResults(f"stage {stage.name} was not committed whole (interrupted "
                                   f"run: no valid manifest in {mpath.parent}): {fix}")
            if allow_missing:
                continue
            raise StaleResults(f"stage {stage.name} has not been computed in {results}: {fix}")
        for rel, digest in manifest.get("outputs", {}).items():
            f = results / rel
            if not f.exists() or sha256_file(f) != digest:
                what = "is missing" if not f.exists() else "does not match its manifest"
                raise StaleResults(f"stage {stage.name} is not intact ({rel} {what}: "
                                   f"interrupted commit or edited file): {fix}")
        if manifest.get("key") != key:
            why = _why_stale(manifest, parts, data)
            raise StaleResults(f"stage {stage.name} is stale ({why}): {fix}")
    merged = {s.name: json.loads((results / "values" / f"{s.name}.json").read_text())
              for s in STAGES if (results / "values" / f"{s.name}.json").exists()}
    vpath = results / "values.json"
    current = json.loads(vpath.read_text()) if vpath.exists() else {}
    if merged and current != merged:
        raise StaleResults(f"{vpath} is not the merge of the stages' values (interrupted run): "
                           f"run `{RUN_COMMAND}{' --quick' if quick_any else ''}`")


def _why_stale(manifest: dict, parts: dict, data: Path) -> str:
    """Why a manifest's key differs from the current one, in a few words."""
    old = manifest.get("parts") or {}
    if not old:
        return "its inputs, code or configuration changed since it ran"
    changed = [rel for rel, d in parts["inputs"].items() if old.get("inputs", {}).get(rel) != d]
    if changed:
        names = ", ".join(str(Path(data.name) / rel) for rel in changed)
        return f"input {names} changed"
    ups = [dep for dep, k in parts["upstream"].items() if old.get("upstream", {}).get(dep) != k]
    if ups:
        return f"upstream stage {', '.join(ups)} changed"
    if old.get("config") != parts["config"]:
        return ("configuration changed; give the same --config/--set as the run, or rerun "
                "with the current configuration")
    if old.get("source") != parts["source"]:
        return "its code changed"
    return "its key changed"
