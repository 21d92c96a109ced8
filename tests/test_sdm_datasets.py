"""The engine's data fetcher (:mod:`analysis.sdm.datasets`): SDM-PSI's mask fetched from its
canonical URL into the user cache, shared with the compendium's registry, and a clear error
off-line; the repository holds no file of the public datasets."""

from __future__ import annotations

import ast
import functools
import hashlib
import http.server
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from analysis import fetch
from analysis.sdm import datasets
from analysis.sdm.maps.space import sdm_gm_mask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_mask():
    """``sdm_gm_mask`` without its in-memory copy, before and after the test."""
    sdm_gm_mask.cache_clear()
    yield
    sdm_gm_mask.cache_clear()


@pytest.fixture
def no_mirror(tmp_path, monkeypatch, fresh_mask):
    """No mirror, an empty cache."""
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)
    monkeypatch.delenv(datasets.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_engine_mask_is_the_registry_row():
    """The engine and the compendium name the same file: one cached copy for both."""
    fetch.registry.cache_clear()
    row = fetch.registry()[datasets.SDM_GM_MASK.relpath]
    assert (row["url"], row["sha256"]) == (datasets.SDM_GM_MASK.url, datasets.SDM_GM_MASK.sha256)
    assert row["redistribute"] == "yes" and row["licence"] == "MIT"


def test_compendium_fetches_through_the_engine():
    """One implementation: the compendium's fetcher has the engine's settings and error."""
    assert fetch.FetchError is datasets.FetchError
    assert (fetch.MIRROR_ENV, fetch.CACHE_ENV, fetch.OFFLINE_ENV) == (
        "PAINEMP_MIRROR", "PAINEMP_CACHE", "PAINEMP_OFFLINE")
    assert fetch.cache_dir is datasets.cache_dir and fetch.offline is datasets.offline
    tree = ast.parse(Path(fetch.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"pooch", "platformdirs", "requests", "urllib.request", "shutil"}


def test_no_dataset_file_is_committed():
    """Public dataset files are fetched, never part of the repository (checked by SHA-256)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    fetch.registry.cache_clear()
    known = {r["sha256"]: rel for rel, r in fetch.registry().items()}
    found = []
    for name in out.decode().split("\0"):
        path = REPO / name
        if name and path.is_file():
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            if sha in known:
                found.append(f"{name} is {known[sha]}")
    assert found == []


def test_mask_from_the_mirror(mirror, fresh_mask, monkeypatch, tmp_path):
    """With a mirror the mask is read in place; nothing is written to the cache."""
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    got = datasets.fetch_file(*datasets.SDM_GM_MASK)
    assert got == mirror / datasets.SDM_GM_MASK.relpath
    assert int(np.asarray(sdm_gm_mask().dataobj).sum()) == 193768
    assert not (tmp_path / "cache").exists()


def test_mask_is_downloaded_into_the_cache_once(mirror, no_mirror, monkeypatch):
    """No mirror, no cached copy: downloaded from its URL (here a local server holding the
    mirror's file), checked, kept in the cache, and then read from there."""
    served = mirror / datasets.SDM_GM_MASK.relpath
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served.parent)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{served.name}"
        monkeypatch.setattr(datasets, "SDM_GM_MASK", datasets.SDM_GM_MASK._replace(url=url))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        img = sdm_gm_mask()
        cached = no_mirror / datasets.SDM_GM_MASK.relpath
        assert cached.read_bytes() == served.read_bytes()
        assert int(np.asarray(img.dataobj).sum()) == 193768
        assert requests == [f"/{served.name}"]
        sdm_gm_mask.cache_clear()
        monkeypatch.setenv(datasets.OFFLINE_ENV, "1")              # the cached copy serves
        assert int(np.asarray(sdm_gm_mask().dataobj).sum()) == 193768
        assert len(requests) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_offline_without_a_copy_says_how_to_get_it(no_mirror, monkeypatch):
    monkeypatch.setenv(datasets.OFFLINE_ENV, "1")
    with pytest.raises(datasets.FetchError) as info:
        sdm_gm_mask()
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("SDM-PSI's grey-matter mask, the engine's default mask, is not "
                          "available: validation/enge2021_sdm/sdm_mask.nii.gz is neither in the "
                          "mirror (PAINEMP_MIRROR) nor in the cache")
    for part in ("PAINEMP_OFFLINE is set", datasets.SDM_GM_MASK.url, "PAINEMP_CACHE",
                 "pass mask_img= to SDMPSI.fit"):
        assert part in msg
    assert not no_mirror.exists()                                   # nothing written


def test_damaged_cached_copy_is_refused(no_mirror, monkeypatch):
    cached = no_mirror / datasets.SDM_GM_MASK.relpath
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    monkeypatch.setenv(datasets.OFFLINE_ENV, "1")
    with pytest.raises(datasets.FetchError, match="cached copy's SHA-256 differs"):
        sdm_gm_mask()
