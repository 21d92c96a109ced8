"""Layers a newcomer can see, held by static checks of the package's source.

* The engine (``analysis/sdm``) is a library: it imports nothing else of the package (no
  compendium module, not even through ``importlib`` and a module name) and never touches the
  configuration.
* Every import is absolute (``from analysis.x import y``): no relative import, so a search for
  a module's name finds every place that uses it.
* The configuration is loaded only by the declared readers, :data:`analysis.config.CONFIG_READERS`
  (the pipeline runner, the commands, the benchmarks), which the README lists; a load is a call
  of ``load_config``, an import of ``load_config`` or of the loader's internals
  (``CONFIG_PATH``, ``_load_default``), or a path spelling ``config.yaml``. Reading keys of a
  configuration handed over as an argument is not a load.
* One import path per helper: a name is imported from the module that defines it, never
  through a module that imports it from elsewhere (the engine's helpers are imported from the
  engine). The engine's public facade ``analysis.sdm`` (``from analysis.sdm import SDMPSI``)
  defines its names lazily and is not such a re-export.
* Progress is reported through one helper (:mod:`analysis.sdm.progress`): no other module
  imports tqdm.
* The engine's modules sit in the sub-packages its ``__init__`` names (:data:`ENGINE_LAYOUT`):
  inputs, maps, statistics, inference, diagnostics, and the few shared modules at its top.
* One name per thing: the name of a stage (``analysis/stages``) or of a command
  (``analysis/commands``) names that stage or command, and at most the one module or package at
  the top of ``analysis/`` that implements it (``commands/fetch.py`` and ``fetch.py``); no
  other module of the package is called so (no ``bench/design.py`` beside stage ``design``).

Each checker takes the package folder, so that it can be run on a small planted tree: every
rule is shown to fail on a violation (``test_*_finds_planted_violations``).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.config import CONFIG_READERS
from analysis.paths import PACKAGE_DIR

ENGINE = "sdm"
PROGRESS_HELPER = "sdm/progress.py"
#: the loader itself: the one module that opens config.yaml
LOADER = "config.py"
#: names whose import or use is a load of the configuration
LOADING_NAMES = {"load_config", "_load_default", "CONFIG_PATH"}
CONFIG_FILE = re.compile(r"(^|[/\\])config\.yaml$")
MODULE_NAME = re.compile(r"^analysis(\.[A-Za-z_][A-Za-z0-9_]*)+$")
#: the engine's layout: its top-level modules and its sub-packages (inputs, maps, statistics,
#: inference, diagnostics); a module elsewhere in the engine is a violation
ENGINE_LAYOUT = {
    "": {"__init__", "backend", "base", "datasets", "errors", "estimator", "heap", "progress",
         "rng"},
    "inputs": {"__init__", "coords", "dataset", "io", "peaks", "project", "statmaps",
               "studies"},
    "maps": {"__init__", "kernel", "preprocess", "space", "templates"},
    "statistics": {"__init__", "effect_sizes", "hedges", "hypothesis", "model", "pooling",
                   "random_effects", "re_kernels", "rubin", "tau2", "wls"},
    "statistics/metansue": {"__init__", "compiled", "imputation", "mle", "settings"},
    "inference": {"__init__", "clusters", "correct", "permutation", "tfce"},
    "diagnostics": {"__init__", "egger", "jackknife", "metaregression", "voxel"},
}
#: folders whose module names are the names users type (a stage, a command)
NAMED_FOLDERS = ("stages", "commands")


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants (module, classes, functions): prose, not code."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                out.add(id(body[0].value))
    return out


def _imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """Every absolute import (top level and inside functions) as ``(line, module)``; for
    ``from analysis import x`` the submodule ``analysis.x`` too."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "analysis":
                out += [(node.lineno, f"analysis.{a.name}") for a in node.names]
    return out


def _is_engine(name: str) -> bool:
    return name == "analysis.sdm" or name.startswith("analysis.sdm.")


def engine_violations(root: Path = PACKAGE_DIR) -> list[str]:
    """Engine modules that import a compendium module (directly, or spelled as a string for
    ``importlib``) or mention the configuration."""
    bad = []
    for path in _modules(root / ENGINE):
        rel = _rel(path, root)
        tree = _tree(path)
        for line, name in _imported_modules(tree):
            if name.startswith("analysis.") and not _is_engine(name):
                bad.append(f"{rel}:{line} imports {name}")
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs and MODULE_NAME.match(node.value)
                    and not _is_engine(node.value)):
                bad.append(f"{rel}:{node.lineno} names the module {node.value}")
        text = path.read_text(encoding="utf-8")
        if "load_config" in text or "config.yaml" in text:
            bad.append(f"{rel} mentions the compendium's configuration")
    return bad


def relative_imports(root: Path = PACKAGE_DIR) -> list[str]:
    """``from . import x`` and ``from .x import y`` anywhere in the package."""
    bad = []
    for path in _modules(root):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                bad.append(f"{_rel(path, root)}:{node.lineno} relative import "
                           f"{'.' * node.level}{node.module or ''}")
    return bad


def config_loads(root: Path = PACKAGE_DIR) -> list[str]:
    """Every load of the configuration: ``(module, line, what)`` as text, in every module."""
    found = []
    for path in _modules(root):
        rel = _rel(path, root)
        tree = _tree(path)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names} & LOADING_NAMES
                if names:
                    what = f"imports {', '.join(sorted(names))}"
            elif isinstance(node, ast.Name) and node.id in LOADING_NAMES:
                what = f"uses {node.id}"
            elif isinstance(node, ast.Attribute) and node.attr in LOADING_NAMES:
                what = f"uses .{node.attr}"
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in docs and CONFIG_FILE.search(node.value)):
                what = f"spells the path {node.value!r}"
            if what:
                found.append(f"{rel}:{node.lineno} {what}")
    return found


def config_loads_outside_readers(root: Path = PACKAGE_DIR,
                                 readers=CONFIG_READERS) -> list[str]:
    allowed = {LOADER, *readers}
    return [f for f in config_loads(root) if f.split(":", 1)[0] not in allowed]


def _module_name(path: Path, root: Path) -> str:
    parts = ("analysis", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def reexports(root: Path = PACKAGE_DIR, importers: tuple[Path, ...] = ()) -> list[str]:
    """Imports of a name through a package module that only imports it itself."""
    borrowed: dict[str, dict[str, str]] = {}  # module -> {name: where it comes from}
    modules = {_module_name(p, root): p for p in _modules(root)}
    for mod, path in modules.items():
        for node in _tree(path).body:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for a in node.names:
                    borrowed.setdefault(mod, {})[a.asname or a.name] = f"{node.module}.{a.name}"
    bad = []
    files = [(p, _rel(p, root)) for p in _modules(root)]
    files += [(p, p.name) for d in importers for p in _modules(d)]
    for path, rel in files:
        for node in ast.walk(_tree(path)):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            for a in node.names:
                origin = borrowed.get(node.module, {}).get(a.name)
                if origin and origin not in modules:  # a submodule is imported, not a name
                    bad.append(f"{rel}:{node.lineno} imports {a.name} from {node.module} "
                               f"(defined in {origin.rsplit('.', 1)[0]})")
    return bad


def tqdm_outside_helper(root: Path = PACKAGE_DIR) -> list[str]:
    """Modules other than the progress helper that import tqdm."""
    return [f"{_rel(path, root)}:{line} imports {name}"
            for path in _modules(root) if _rel(path, root) != PROGRESS_HELPER
            for line, name in _imported_modules(_tree(path))
            if name == "tqdm" or name.startswith("tqdm.")]


def engine_layout_violations(root: Path = PACKAGE_DIR, layout=None) -> list[str]:
    """Engine modules outside :data:`ENGINE_LAYOUT`, and declared modules that are missing."""
    layout = ENGINE_LAYOUT if layout is None else layout
    engine = root / ENGINE
    found = {_rel(p, engine) for p in _modules(engine)}
    declared = {f"{pkg}/{m}.py".lstrip("/") for pkg, mods in layout.items() for m in mods}
    return ([f"{ENGINE}/{f} is not in the engine's layout" for f in sorted(found - declared)]
            + [f"{ENGINE}/{f} is missing" for f in sorted(declared - found)])


def repeated_names(root: Path = PACKAGE_DIR) -> list[str]:
    """Modules (or packages) named like a stage or a command that are neither that stage or
    command nor the one implementation at the top of the package."""
    names = {p.stem for d in NAMED_FOLDERS for p in (root / d).glob("*.py")
             if p.stem != "__init__"}
    bad = []
    for path in _modules(root):
        rel = path.relative_to(root)
        parts = rel.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or parts[0] in NAMED_FOLDERS:
            continue
        # parts[0]: a module or package at the top, which may implement the stage or command
        bad += [f"{rel.as_posix()} is named like stage or command {name!r}"
                for name in parts[1:] if name in names]
    return sorted(set(bad))


# --------------------------------------------------------------------------------------------
# the package as it is
# --------------------------------------------------------------------------------------------
def test_engine_imports_nothing_else_of_the_package():
    assert engine_violations() == []


def test_no_relative_imports():
    assert relative_imports() == []


def test_configuration_is_loaded_by_the_declared_readers_only():
    assert config_loads_outside_readers() == []


def test_every_declared_reader_exists_and_loads_the_configuration():
    """The list is exact: no reader that no longer reads (or no longer exists) stays in it."""
    loading = {f.split(":", 1)[0] for f in config_loads()}
    assert [r for r in CONFIG_READERS if not (PACKAGE_DIR / r).is_file()] == []
    assert sorted(set(CONFIG_READERS) - loading) == []


def test_readme_states_the_declared_readers():
    readme = (PACKAGE_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert [r for r in CONFIG_READERS if f"analysis/{r}" not in readme] == []


def test_one_import_path_per_helper():
    assert reexports(importers=(PACKAGE_DIR.parent / "tests",)) == []


def test_progress_goes_through_the_helper():
    assert tqdm_outside_helper() == []


def test_engine_modules_sit_in_the_declared_sub_packages():
    assert engine_layout_violations() == []


def test_one_name_per_stage_and_command():
    assert repeated_names() == []


def test_every_benchmark_registers_its_own_entry_point():
    """Each benchmark of ``python -m analysis bench`` is registered on its function
    ``bench_<name>`` (hyphens as underscores), not on a helper beside it."""
    import importlib

    from analysis.bench import BENCH_MODULES, BENCHMARKS

    for module in BENCH_MODULES:
        importlib.import_module(module)
    assert "meta-covariates" in BENCHMARKS
    wrong = {name: func.__name__ for name, (func, _) in BENCHMARKS.items()
             if func.__name__ != "bench_" + name.replace("-", "_")}
    assert wrong == {}


# --------------------------------------------------------------------------------------------
# every rule fails on a violation planted in a small tree
# --------------------------------------------------------------------------------------------
def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "analysis" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "analysis"


CLEAN = {
    "__init__.py": "",
    "config.py": 'from pathlib import Path\n\nCONFIG_PATH = Path(__file__).with_name("config.yaml")\n'
                 "\n\ndef load_config():\n    return {}\n",
    "sdm/__init__.py": '"""The engine."""\n',
    "sdm/maps/space.py": "import numpy as np\n\nfrom analysis.sdm.errors import DataError\n",
    "sdm/progress.py": "from tqdm import tqdm\n",
    "commands/run.py": "from analysis.config import load_config\n\nCFG = load_config()\n",
    "stages/meta.py": '"""Reads ``config.yaml`` values handed to it."""\n\n\n'
                      'def run(config):\n    return config["sdm"]["mask"]\n',
}


def test_the_clean_planted_tree_passes(tmp_path):
    root = _plant(tmp_path, CLEAN)
    assert engine_violations(root) == []
    assert relative_imports(root) == []
    assert config_loads_outside_readers(root, readers=("commands/run.py",)) == []
    assert tqdm_outside_helper(root) == []
    assert reexports(root) == []
    assert repeated_names(root) == []


def test_engine_rule_covers_the_sub_packages(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "sdm/inputs/planted.py": "import analysis.io\n",
                             "sdm/statistics/metansue/planted.py": (
                                 "def f():\n    from analysis import config\n    return config\n")})
    assert engine_violations(root) == [
        "sdm/inputs/planted.py:1 imports analysis.io",
        "sdm/statistics/metansue/planted.py:2 imports analysis.config",
    ]


def test_layout_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "sdm/kernel_fit.py": ""})
    layout = {"": {"__init__", "progress"}, "maps": {"space", "kernel"}}
    assert engine_layout_violations(_plant(tmp_path / "clean", CLEAN),
                                    {"": {"__init__", "progress"}, "maps": {"space"}}) == []
    assert engine_layout_violations(root, layout) == [
        "sdm/kernel_fit.py is not in the engine's layout",
        "sdm/maps/kernel.py is missing",
    ]


def test_one_name_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "commands/fetch.py": "", "fetch.py": "",
                             "stages/design.py": "", "bench/design.py": "",
                             "checks/meta.py": "", "figures/design/__init__.py": ""})
    assert repeated_names(root) == [
        "bench/design.py is named like stage or command 'design'",
        "checks/meta.py is named like stage or command 'meta'",
        "figures/design/__init__.py is named like stage or command 'design'",
    ]


def test_engine_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "sdm/planted.py": (
        "import importlib\n"
        "import analysis.io\n"
        "from analysis import grid\n"
        "\n\ndef f():\n"
        "    from analysis.labels import peak_labels\n"
        '    return importlib.import_module("analysis.render"), grid, peak_labels\n')})
    assert engine_violations(root) == [
        "sdm/planted.py:2 imports analysis.io",
        "sdm/planted.py:3 imports analysis.grid",
        "sdm/planted.py:7 imports analysis.labels",
        "sdm/planted.py:8 names the module analysis.render",
    ]


def test_relative_import_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN,
                             "sdm/planted.py": "from . import space\n",
                             "stages/planted.py": "from .meta import run\nfrom .. import config\n"})
    assert relative_imports(root) == [
        "sdm/planted.py:1 relative import .",
        "stages/planted.py:1 relative import .meta",
        "stages/planted.py:2 relative import ..",
    ]


def test_configuration_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN,
                             "labels_planted.py": "from analysis.config import load_config as lc\n"
                                                  "\nCFG = lc()\n",
                             "grid_planted.py": "from analysis import config\n\n\n"
                                                "def mask():\n"
                                                '    return config.load_config()["sdm"]\n',
                             "yaml_planted.py": "from pathlib import Path\n\nimport yaml\n\n"
                                                'CFG = yaml.safe_load((Path(__file__).parent / '
                                                '"config.yaml").read_text())\n',
                             "path_planted.py": "from analysis.config import CONFIG_PATH\n"})
    assert config_loads_outside_readers(root, readers=("commands/run.py",)) == [
        "grid_planted.py:5 uses .load_config",
        "labels_planted.py:1 imports load_config",
        "path_planted.py:1 imports CONFIG_PATH",
        "yaml_planted.py:5 spells the path 'config.yaml'",
    ]
    # a reader that is not declared is a violation too
    assert config_loads_outside_readers(root, readers=())[:1] == [
        "commands/run.py:1 imports load_config"]


def test_import_path_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN,
                             "io.py": "from analysis.sdm.errors import DataError  # noqa\n\n\n"
                                      "def write_json():\n    return 1\n",
                             "render.py": "from analysis.io import DataError, write_json\n"
                                          "from analysis import io\n"})
    assert reexports(root) == ["render.py:1 imports DataError from analysis.io "
                               "(defined in analysis.sdm.errors)"]


def test_progress_rule_finds_planted_violations(tmp_path):
    root = _plant(tmp_path, {**CLEAN, "simulate.py": "from tqdm.auto import tqdm\n",
                             "bench/x.py": "import tqdm\n"})
    assert tqdm_outside_helper(root) == ["bench/x.py:1 imports tqdm",
                                         "simulate.py:1 imports tqdm.auto"]


# --------------------------------------------------------------------------------------------
# the engine at run time, and its documentation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["analysis.sdm.estimator", "analysis.sdm.inference.permutation",
                                    "analysis.sdm.maps.preprocess", "analysis.sdm.inputs.dataset"])
def test_engine_modules_import_alone(module):
    """Importing an engine module pulls in no other part of the package."""
    code = (f"import sys, {module}; "
            "bad = sorted(m for m in sys.modules if m.startswith('analysis.') "
            "and not m.startswith('analysis.sdm')); print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE_DIR.parent, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_public_engine_function_has_a_docstring():
    """Public functions, classes and methods of the engine are documented."""
    missing = []
    for path in _modules(PACKAGE_DIR / ENGINE):
        tree = _tree(path)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            if not ast.get_docstring(node):
                missing.append(f"{path.name}:{node.name}")
            if isinstance(node, ast.ClassDef):
                missing += [f"{path.name}:{node.name}.{m.name}" for m in node.body
                            if isinstance(m, ast.FunctionDef) and not m.name.startswith("_")
                            and not ast.get_docstring(m)]
    assert missing == []
