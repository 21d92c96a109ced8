"""The ``fetch`` command against a temporary mirror and cache (no network)."""

from __future__ import annotations

import hashlib

import pytest

from analysis import fetch
from analysis.cli import main


@pytest.fixture
def tiny_registry(tmp_path, monkeypatch):
    """A two-dataset registry whose files live in a temporary mirror; an empty cache."""
    mirror = tmp_path / "mirror"
    files = {
        "grp/alpha/a.txt": b"alpha file\n",
        "grp/alpha/sub/b.txt": b"second alpha file\n",
        "grp/beta/c.txt": b"beta file\n",
    }
    lines = ["relpath\tsha256\turl"]
    for rel, data in files.items():
        lines.append(f"{rel}\t{hashlib.sha256(data).hexdigest()}\t-")
        if not rel.startswith("grp/beta"):  # beta is missing from the mirror
            (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
            (mirror / rel).write_bytes(data)
    reg = tmp_path / "datasets.tsv"
    reg.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(fetch, "REGISTRY", reg)
    monkeypatch.setenv(fetch.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    fetch.registry.cache_clear()
    yield mirror
    fetch.registry.cache_clear()


def test_list_groups_and_availability(tiny_registry, capsys):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert "grp/alpha\t2 files\t2 mirror" in out
    assert "grp/beta\t1 files\t1 missing" in out


def test_fetch_from_mirror_reports_origin(tiny_registry, capsys):
    assert main(["fetch", "grp/alpha"]) == 0
    out = capsys.readouterr().out
    assert f"grp/alpha\t2 files\tmirror\t{tiny_registry / 'grp/alpha'}" in out


def test_missing_dataset_fails_without_download(tiny_registry, capsys):
    assert main(["fetch", "--no-download", "grp/beta"]) == 1
    assert "grp/beta\tFAILED" in capsys.readouterr().out


def test_checksum_mismatch_is_an_error(tiny_registry, capsys):
    (tiny_registry / "grp/alpha/a.txt").write_bytes(b"tampered\n")
    assert main(["fetch", "grp/alpha"]) == 1
    assert "SHA-256 differs" in capsys.readouterr().out


def test_cache_is_used_and_reported(tiny_registry, tmp_path, capsys):
    cached = tmp_path / "cache" / "grp/beta/c.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"beta file\n")
    assert main(["fetch", "--no-download", "grp/beta"]) == 0
    assert f"grp/beta\t1 files\tcache\t{cached.parent}" in capsys.readouterr().out


def test_unknown_dataset(tiny_registry, capsys):
    assert main(["fetch", "nope/none"]) == 2
    assert "unknown dataset" in capsys.readouterr().out


def test_real_registry_groups():
    from analysis.commands.fetch import dataset_groups

    fetch.registry.cache_clear()
    groups = dataset_groups()
    assert {"nimare_data/neurosynth", "nimare_data/neuroquery",
            "validation/enge2021_sdm"} <= set(groups)
