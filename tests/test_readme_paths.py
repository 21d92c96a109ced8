"""Every path the README names exists: in the repository, among the outputs of a pipeline run,
in the dataset registry, or as a file name the package writes or reads.

A path is an inline code span of the README (or an entry of its layout block) without spaces
that contains ``/`` or ends in ``.py``, ``.yaml``, ``.tsv``, ``.qmd`` or ``.md``. Where it is
looked for:

* the repository (``analysis/render.py``, ``data/``; ``file.py::test_name`` also needs the test);
* the results of the session's quick pipeline run (``tables/table3.tsv``, ``maps/z.nii.gz``,
  ``results/values.json``, ``results/.stages/*.json``; ``figures/figure1.png/.svg`` stands for
  both files; wildcards match), so that a renamed output makes the README fail;
* the other generated folders, which must be git-ignored (``.venv/``, ``_manuscript/``,
  ``dist/``);
* the dataset registry ``analysis/datasets.tsv`` (a dataset, or a file of one);
* a bare file name (``peaks.tsv``, ``LICENSES.tsv``): a file of the repository or of the run, or
  a name the package spells (a file it writes or reads).
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PATH_LIKE = re.compile(r"^[\w.~*<>-][\w./*~<>:-]*$")
SUFFIXES = (".py", ".yaml", ".tsv", ".qmd", ".md")
#: results folders of a run (paths relative to ``results/``)
RESULT_DIRS = ("tables/", "figures/", "maps/", "intermediate/")
#: generated folders at the top of the repository, besides results/ (the virtualenv, the
#: rendered manuscript, the archive)
GENERATED = (".venv/", "_manuscript/", "dist/")


def readme_paths(text: str) -> list[str]:
    """The path-like names of the README, in order of appearance, each once."""
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    layout = re.search(r"## Layout\s+```\n(.*?)```", text, flags=re.S)
    if layout:
        spans += re.findall(r"(?:^|\s)((?:\.?[\w-]+/)+[\w.-]*)(?=[\s,]|$)", layout.group(1),
                            flags=re.M)
    out = []
    for s in spans:
        s = s.strip()
        if " " in s or not PATH_LIKE.match(s) or re.fullmatch(r"\.\w+", s):
            continue  # prose, commands, formulas, a bare suffix
        if s.startswith(("~", "/", "<")) or "://" in s:
            continue  # the user's home, placeholders, URLs
        if "/" in s or s.endswith(SUFFIXES):
            out.append(s)
    return list(dict.fromkeys(out))


def _expand(name: str) -> list[str]:
    """``figures/figure1.png/.svg`` -> both files."""
    m = re.fullmatch(r"(.+)(\.\w+)/(\.\w+)", name)
    return [m.group(1) + m.group(2), m.group(1) + m.group(3)] if m else [name]


def _tracked() -> list[str]:
    """The repository's files: tracked, and new ones git does not ignore."""
    return subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def _package_strings() -> set[str]:
    """Every string constant of the package's code (file names it writes or reads)."""
    found = set()
    for path in (REPO / "analysis").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def _ignored(folder: str) -> bool:
    """Whether git ignores the top-level ``folder`` (as a folder or as any entry)."""
    return any(subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=REPO,
                              capture_output=True).returncode == 0
               for name in (folder, folder + "/"))


def _in_repo(name: str, tracked: list[str]) -> bool:
    name = name.rstrip("/")
    return any(t == name or t.startswith(name + "/") or fnmatch.fnmatch(t, name) for t in tracked)


def missing_paths(names, tracked, outputs, datasets, strings) -> list[str]:
    """The names that are found nowhere (see the module docstring)."""
    missing = []
    for name in names:
        if "::" in name:
            file, test = name.split("::", 1)
            if not ((REPO / file).is_file()
                    and f"def {test}(" in (REPO / file).read_text(encoding="utf-8")):
                missing.append(name)
            continue
        for one in _expand(name):
            rel = one.removeprefix("results/")
            if _in_repo(one, tracked):
                continue
            if (one.startswith("results/") or one.startswith(RESULT_DIRS)) and any(
                    o == rel.rstrip("/") or o.startswith(rel) or fnmatch.fnmatch(o, rel)
                    for o in outputs):
                continue
            if one == "results/" or one.startswith(GENERATED):
                if _ignored(one.split("/")[0]):
                    continue
            if any(d == one.rstrip("/") or d.startswith(one.rstrip("/") + "/")
                   or d.endswith("/" + one) for d in datasets):
                continue
            if "/" not in one.rstrip("/") and (
                    one in strings or one.rstrip("/") in strings
                    or any(Path(p).name == one for p in [*tracked, *outputs])):
                continue
            missing.append(one)
    return missing


def _registry() -> list[str]:
    rows = (REPO / "analysis" / "datasets.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [r.split("\t")[0] for r in rows if r.strip()]


def _run_outputs(results: Path) -> list[str]:
    """Every file of a run's results folder, relative to it."""
    return [p.relative_to(results).as_posix() for p in sorted(results.rglob("*")) if p.is_file()]


def test_every_path_the_readme_names_exists(quick_results):
    results, _, missing_stages = quick_results
    assert missing_stages == []
    names = readme_paths(README.read_text(encoding="utf-8"))
    assert len(names) > 50
    assert missing_paths(names, _tracked(), _run_outputs(results), _registry(),
                         _package_strings()) == []


@pytest.mark.parametrize("name", [
    "analysis/sdm/bench_calibration.py",        # a module that does not exist
    "tests/test_meta_stage.py::test_gone",      # a test that does not exist
    "tables/table9.tsv",                        # an output no stage writes
    "figures/figure1.png/.gif",                 # one of two files missing
    "validation/enge2021_sdm/nothing.txt",      # not in the dataset registry
    "no_such_file.tsv",                         # a bare name nothing knows
    "analysis/nowhere/",                        # a folder that does not exist
])
def test_a_wrong_path_is_found(name):
    outputs = ["tables/table3.tsv", "figures/figure1.png", "maps/z.nii.gz"]
    text = f"See `{name}` and `analysis/render.py`."
    names = readme_paths(text)
    assert names == [name, "analysis/render.py"]
    assert missing_paths(names, _tracked(), outputs, _registry(), set()) != []


def test_paths_are_read_from_spans_and_the_layout_block():
    text = ("Run `make test` on `data/` with `(r + 1)/(n + 1)` and `~/.cache/x`; `.qmd` files.\n"
            "## Layout\n\n```\nanalysis/sdm/        the engine\n"
            "analysis/x.py, tests/test_x.py  two files\n```\n")
    assert readme_paths(text) == ["data/", "analysis/sdm/", "analysis/x.py", "tests/test_x.py"]
