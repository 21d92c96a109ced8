"""Layers a newcomer can see: the engine is a library; only the stages (and the entry points:
commands, benchmarks, the pipeline runner) read the configuration."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from analysis.paths import PACKAGE_DIR

ENGINE = PACKAGE_DIR / "sdm"
#: where ``analysis.config.load_config`` may be called: the stages, the entry points
CONFIG_READERS = ("config.py", "pipeline.py", "stages/", "commands/", "bench/")


def _modules(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every imported module name (top level and inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "analysis":
                out += [(node.lineno, f"analysis.{a.name}") for a in node.names]
    return out


def engine_violations() -> list[str]:
    bad = []
    for path in _modules(ENGINE):
        for line, name in _imports(path):
            if (name == "analysis" or name.startswith("analysis.")) and not (
                    name == "analysis.sdm" or name.startswith("analysis.sdm.")):
                bad.append(f"{path.relative_to(PACKAGE_DIR)}:{line} imports {name}")
        text = path.read_text(encoding="utf-8")
        if "load_config" in text or "config.yaml" in text:
            bad.append(f"{path.relative_to(PACKAGE_DIR)} mentions the compendium's configuration")
    return bad


def config_readers() -> list[str]:
    """Modules (relative paths) that call or import ``load_config``."""
    found = []
    for path in _modules(PACKAGE_DIR):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            name = (node.func.attr if isinstance(node.func, ast.Attribute) else
                    getattr(node.func, "id", None)) if isinstance(node, ast.Call) else None
            imported = isinstance(node, ast.ImportFrom) and any(
                a.name == "load_config" for a in node.names)
            if name == "load_config" or imported:
                found.append(str(path.relative_to(PACKAGE_DIR)))
                break
    return found


def test_engine_imports_nothing_else_of_the_package():
    assert engine_violations() == []


def test_configuration_is_read_by_stages_and_entry_points_only():
    outside = [m for m in config_readers() if not m.startswith(CONFIG_READERS)]
    assert outside == []


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """Both checks see a violation planted in a copy of the package."""
    import shutil

    import analysis.paths as paths_mod

    copy = tmp_path / "analysis"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "sdm" / "planted.py").write_text(
        "def f():\n    from analysis.grid import gm_mask\n    return gm_mask()\n")
    (copy / "labels_planted.py").write_text(
        "from analysis.config import load_config\n\nCFG = load_config()\n")
    monkeypatch.setattr(paths_mod, "PACKAGE_DIR", copy)
    monkeypatch.setitem(globals(), "PACKAGE_DIR", copy)
    monkeypatch.setitem(globals(), "ENGINE", copy / "sdm")
    assert engine_violations() == ["sdm/planted.py:2 imports analysis.grid"]
    assert "labels_planted.py" in config_readers()


@pytest.mark.parametrize("module", ["analysis.sdm.estimator", "analysis.sdm.permutation",
                                    "analysis.sdm.preprocess", "analysis.sdm.dataset"])
def test_engine_modules_import_alone(module):
    """Importing an engine module pulls in no other part of the package."""
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "bad = sorted(m for m in sys.modules if m.startswith('analysis.') "
            "and not m.startswith('analysis.sdm')); print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE_DIR.parent, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
