"""requirements.lock pins what pyproject.toml asks for: the runtime dependencies and the ``test``
extra (which includes dask[distributed], so the Dask path of the permutations is tested)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
REPO = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==(\S+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _wanted() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = set()
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)(\[([^\]]+)\])?", req)
        out.add(_norm(m.group(1)))
        if m.group(3) and _norm(m.group(1)) == "dask":
            out |= {_norm(x) for x in m.group(3).split(",")}  # dask's extra is a package
    return out


def test_lock_pins_the_runtime_and_test_requirements():
    pins = _locked()
    assert sorted(_wanted() - set(pins)) == []
    # dask[distributed] needs both at one release
    assert pins["dask"] == pins["distributed"]


def test_every_pin_has_hashes():
    text = (REPO / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    pinned = [b for b in blocks if "==" in b.split("\n", 1)[0]]
    assert pinned and all("--hash=sha256:" in b for b in pinned)
