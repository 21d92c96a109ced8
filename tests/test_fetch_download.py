"""Downloads through pooch from a local HTTP server: checksum, retries, cache, messages."""

from __future__ import annotations

import hashlib
import http.server
import logging
import stat
import sys
import threading

import pytest

from analysis import fetch

GOOD = b"payload " * 5000  # 40 kB: several chunks


class _Server:
    """A local HTTP server with a per-path response plan (status codes, then the content)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail_first: dict[str, list[int]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                plan = outer.fail_first.get(self.path)
                if plan:
                    self.send_error(plan.pop(0))
                    return
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def remote(server, tmp_path, monkeypatch):
    """Registry of files served by the local server; an empty mirror and cache."""
    server.files["/good.bin"] = GOOD
    server.files["/tampered.bin"] = b"not what the registry says\n"
    sha = hashlib.sha256(GOOD).hexdigest()
    rows = [("grp/remote/good.bin", sha, f"{server.url}/good.bin"),
            ("grp/remote/tampered.bin", sha, f"{server.url}/tampered.bin"),
            ("grp/remote/gone.bin", sha, f"{server.url}/gone.bin"),
            ("grp/remote/flaky.bin", sha, f"{server.url}/flaky.bin"),
            ("grp/remote/SOURCE", sha, "-")]
    server.files["/flaky.bin"] = GOOD
    reg = tmp_path / "datasets.tsv"
    reg.write_text("relpath\tsha256\turl\n" + "".join("\t".join(r) + "\n" for r in rows))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setattr(fetch, "REGISTRY", reg)
    monkeypatch.setattr(fetch, "RETRIES", 1)
    monkeypatch.setattr("pooch.core.time.sleep", lambda s: None)  # no waits between attempts
    monkeypatch.setenv(fetch.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fetch.registry.cache_clear()
    yield tmp_path
    fetch.registry.cache_clear()


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_download_into_the_cache(remote, server, caplog):
    caplog.set_level(logging.INFO, logger="analysis.fetch")
    got = fetch.fetch_file("grp/remote/good.bin")
    assert got == remote / "cache" / "grp/remote/good.bin"
    assert got.read_bytes() == GOOD
    assert stat.S_IMODE(got.stat().st_mode) == 0o666 & ~_umask()  # not pooch's private 0600
    assert _files_under(remote / "mirror") == []                  # the mirror is never written
    assert "downloading grp/remote/good.bin" in caplog.text
    assert "good.bin: 39.1kB/39.1kB (100%)" in caplog.text         # progress as a log line
    n = len(server.requests)
    assert fetch.fetch_file("grp/remote/good.bin") == got          # then served by the cache
    assert len(server.requests) == n


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_switch_stops_every_download(remote, server, monkeypatch, value):
    """PAINEMP_OFFLINE: a file reachable on the server is not downloaded; the error names it."""
    monkeypatch.setenv(fetch.OFFLINE_ENV, value)
    assert fetch.offline()
    with pytest.raises(fetch.FetchError, match=r"grp/remote/good.bin is neither in the mirror "
                                               r".*PAINEMP_OFFLINE is set"):
        fetch.fetch_file("grp/remote/good.bin")
    assert server.requests == []                                    # not one request made
    assert _files_under(remote / "cache") == []
    (remote / "mirror" / "grp/remote").mkdir(parents=True)          # the mirror still serves
    (remote / "mirror" / "grp/remote/good.bin").write_bytes(GOOD)
    assert fetch.fetch_file("grp/remote/good.bin").read_bytes() == GOOD
    monkeypatch.setenv(fetch.OFFLINE_ENV, "0")                      # switched off: downloads
    assert not fetch.offline()


def test_bad_checksum_is_an_error_and_leaves_nothing(remote, server):
    with pytest.raises(fetch.FetchError, match="grp/remote/tampered.bin: download from .* failed"):
        fetch.fetch_file("grp/remote/tampered.bin")
    assert server.requests == ["/tampered.bin"] * 2                # retried once (RETRIES = 1)
    assert _files_under(remote / "cache") == []                    # no partial or bad file


def test_http_error_names_the_file(remote, server):
    with pytest.raises(fetch.FetchError, match=r"grp/remote/gone.bin: could not download "
                                               r".*gone.bin after 2 attempt\(s\).*404"):
        fetch.fetch_file("grp/remote/gone.bin")
    assert _files_under(remote / "cache") == []


def test_transient_failure_is_retried(remote, server):
    server.fail_first["/flaky.bin"] = [503]
    assert fetch.fetch_file("grp/remote/flaky.bin").read_bytes() == GOOD
    assert server.requests == ["/flaky.bin"] * 2


def test_corrupted_cache_copy_is_replaced(remote, server):
    cached = remote / "cache" / "grp/remote/good.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(fetch.FetchError, match="cached copy's SHA-256 differs"):
        fetch.fetch_file("grp/remote/good.bin", download=False)
    assert fetch.fetch_file("grp/remote/good.bin").read_bytes() == GOOD


def test_mirror_only_file_and_downloads_off(remote, server):
    with pytest.raises(fetch.FetchError, match="grp/remote/SOURCE has no download URL"):
        fetch.fetch_file("grp/remote/SOURCE")
    with pytest.raises(fetch.FetchError, match="grp/remote/good.bin is neither in the mirror"):
        fetch.fetch_file("grp/remote/good.bin", download=False)
    assert server.requests == []


def test_mirror_is_read_in_place(remote, server):
    src = remote / "mirror" / "grp/remote/good.bin"
    src.parent.mkdir(parents=True)
    src.write_bytes(GOOD)
    assert fetch.fetch_file("grp/remote/good.bin") == src
    assert server.requests == [] and not (remote / "cache").exists()


def test_default_cache_is_the_platform_cache_folder(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.delenv(fetch.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_dir() == platformdirs.user_cache_path("painemp-compendium", appauthor=False)
    if sys.platform.startswith("linux"):
        assert fetch.cache_dir() == tmp_path / "xdg" / "painemp-compendium"
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "mine"))
    assert fetch.cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("row, message", [
    ("a/b.txt\t\thttp://x", "row 1, field 'sha256': empty"),
    ("a/b.txt\tabc\thttp://x", "row 1, field 'sha256': 'abc' is not a SHA-256"),
    ("\t" + "0" * 64 + "\thttp://x", "row 1, field 'relpath': empty"),
])
def test_malformed_registry_row_is_located(tmp_path, monkeypatch, row, message):
    reg = tmp_path / "datasets.tsv"
    reg.write_text(f"relpath\tsha256\turl\n{row}\n")
    monkeypatch.setattr(fetch, "REGISTRY", reg)
    fetch.registry.cache_clear()
    try:
        with pytest.raises(fetch.FetchError, match=message):
            fetch.registry()
    finally:
        fetch.registry.cache_clear()


def test_real_registry_is_well_formed():
    fetch.registry.cache_clear()
    reg = fetch.registry()
    assert all(r["url"] == "-" or r["url"].startswith("https://github.com/") for r in reg.values())
    bs = [r for r in reg if r.startswith("atlases/brainspace/")]
    assert len(bs) == 6 and all("MICA-MNI/BrainSpace/raw/8730de8" in reg[r]["url"]
                                for r in bs if not r.endswith("SOURCE"))


def _umask() -> int:
    from analysis.sdm.inputs.io import current_umask

    return current_umask()
