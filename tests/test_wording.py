"""Code and documentation stand on their own: no pointers to material outside the repository.

Sentences cite the primary sources (papers, manuals, software) or state the measured fact
directly; they do not point to unpublished notes by section number, to labels of checks or work
items defined elsewhere, to who wrote the code, or to folders of one particular machine. The
forbidden strings are assembled from pieces below so that this file does not match them itself.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what is checked: folders (recursively) and single files, relative to the repository root
CHECKED = ("analysis", "tests", "README.md", "data/README.md", "Makefile")

#: patterns searched in the whole text of every checked file
TEXT_PATTERNS = {
    "a section of an unpublished note": re.compile(re.escape("spec" + " §"), re.IGNORECASE),
    "an unpublished note by file name": re.compile(
        "|".join(re.escape(n + ".md") for n in ("sdm-psi", "characterisation",
                                                "compendium-practices")), re.IGNORECASE),
    "an unpublished note by title": re.compile(re.escape("characterisation" + " spec"),
                                               re.IGNORECASE),
    "who wrote the code": re.compile("engin" + "eer", re.IGNORECASE),
    "a status marker of an unpublished note": re.compile("UNCON" + "FIRMED"),
    "an absolute path of one machine": re.compile(
        "|".join(re.escape("/" + d + "/") for d in ("wo" + "rk", "ro" + "ot"))),
}
#: patterns searched in prose only: comments and strings of Python files, all of other files
PROSE_PATTERNS = {
    "a label of a work item": re.compile(r"\b" + "C" + r"[12]\b"),
    "a label of a check defined elsewhere": re.compile(r"\b" + "T" + r"[1-8]\b"),
}
#: Python tokens that hold prose (f-string pieces are tokens of their own from Python 3.12)
PROSE_TOKENS = {"COMMENT", "STRING", "FSTRING_MIDDLE"}


def checked_files() -> list[Path]:
    """The tracked files under :data:`CHECKED` (every file there when git is not available)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *CHECKED], cwd=ROOT,
                             capture_output=True, check=True).stdout
        names = [n for n in out.decode("utf-8").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if not names:
        for entry in CHECKED:
            path = ROOT / entry
            if path.is_file():
                names.append(entry)
            for folder, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
                names += [str(Path(folder, f).relative_to(ROOT)) for f in files]
    return [ROOT / n for n in sorted(set(names))
            if "__pycache__" not in Path(n).parts and (ROOT / n).is_file()]


def read_text(path: Path) -> str | None:
    """The file as text, or None for a binary file (NUL bytes or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def prose(path: Path, text: str) -> list[tuple[int, str]]:
    """``(first line, text)`` of every comment and string of a Python file; else every line."""
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return list(enumerate(text.splitlines(), 1))
    return [(t.start[0], t.string) for t in tokens if tokenize.tok_name[t.type] in PROSE_TOKENS]


def findings(path: Path) -> list[str]:
    text = read_text(path)
    if text is None:
        return []
    rel = path.relative_to(ROOT)
    out = []
    for what, pat in TEXT_PATTERNS.items():
        for m in pat.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(f"{rel}:{line}: {what}: {m.group(0)!r}")
    for start, chunk in prose(path, text):
        for what, pat in PROSE_PATTERNS.items():
            for m in pat.finditer(chunk):
                line = start + chunk.count("\n", 0, m.start())
                out.append(f"{rel}:{line}: {what}: {m.group(0)!r}")
    return out


def test_the_checks_see_the_sources():
    files = {p.relative_to(ROOT).as_posix() for p in checked_files()}
    assert {"README.md", "Makefile", "analysis/config.yaml", "tests/conftest.py"} <= files
    assert any(f.startswith("analysis/sdm/") and f.endswith(".py") for f in files)


def test_patterns_catch_what_they_should():
    here = Path(__file__)
    bad = ("see the " + "spec" + " §4.2", "after " + "sdm-psi" + ".md", "the "
           + "engin" + "eer's report", "checks " + "T" + "5", "the " + "C" + "2 estimator",
           "/wo" + "rk/main/data", "is " + "UNCON" + "FIRMED")
    for sentence in bad:
        hits = [w for w, p in TEXT_PATTERNS.items() if p.search(sentence)]
        hits += [w for w, p in PROSE_PATTERNS.items() if p.search(sentence)]
        assert hits, sentence
    # labels count in prose only: identifiers such as a variable named t1 are not prose
    code = "t1 = 0\n" + "T" + "1 = 1  # the first timer\n"
    assert [s for _, s in prose(here, code)] == ["# the first timer"]


def test_no_pointers_to_material_outside_the_repository():
    bad = [f for path in checked_files() for f in findings(path)]
    assert not bad, "rewrite these to cite the primary source or state the fact:\n" + "\n".join(bad)
