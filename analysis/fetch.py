"""Fetch the public datasets the pipeline needs, verified by SHA-256.

The registry ``analysis/datasets.tsv`` lists every file (path relative to the dataset root,
checksum, canonical URL at a pinned commit): Neurosynth v7 and NeuroQuery v1 in NiMARE's layout,
the Yeo-7 / Schaefer-400 2 mm volumes, BrainSpace's HCP group FC matrix, Schaefer-400 conte69
parcellation and conte69 surfaces, and the public SDM-PSI v6.21 run of Enge et al. (2021).

Lookup order for a file:

1. a local mirror, if the environment variable ``PAINEMP_MIRROR`` names a folder with the same
   layout (read in place, never written);
2. the user cache, ``PAINEMP_CACHE`` or the platform's user cache folder (platformdirs:
   ``~/.cache/painemp-compendium`` on Linux, ``~/Library/Caches/painemp-compendium`` on macOS);
3. a download from the canonical URL into the cache, through pooch: up to :data:`RETRIES`
   further attempts after a network error or a checksum mismatch, a progress bar in a terminal
   and periodic log lines otherwise (:mod:`analysis.sdm.progress`). The download goes to a temporary
   file beside its destination and is moved into place only once its checksum matches, so the
   cache never holds a partial or unverified file.

Every file is checked against its SHA-256 before use; a mismatch is an error
(:class:`FetchError`, naming the file), not a warning.

**Offline switch.** With the environment variable ``PAINEMP_OFFLINE=1`` (:func:`offline`) no
download is ever attempted: a file that is neither in the mirror nor in the cache is an error
naming it. ``python -m analysis verify`` runs the pipeline this way against the datasets of an
archive.

The registry also records, per file, its dataset, the dataset's licence (SPDX identifier), the
version (commit) and whether the licence allows redistribution (``redistribute``: yes or no);
``python -m analysis archive`` copies only redistributable files and writes this register as
``LICENSES.tsv``.
"""

from __future__ import annotations

import csv
import logging
import os
from functools import lru_cache
from pathlib import Path

from analysis.sdm.io import atomic_path, current_umask, sha256_file

LGR = logging.getLogger(__name__)

MIRROR_ENV = "PAINEMP_MIRROR"
OFFLINE_ENV = "PAINEMP_OFFLINE"
CACHE_ENV = "PAINEMP_CACHE"
APP_NAME = "painemp-compendium"
REGISTRY = Path(__file__).with_name("datasets.tsv")
RETRIES = 3
"""Download attempts after the first one (pooch waits 1 s, 2 s, ... between them)."""
TIMEOUT_S = 120
"""Seconds without data before a download attempt fails."""


class FetchError(RuntimeError):
    """A dataset file could not be obtained or failed its checksum."""


@lru_cache(maxsize=1)
def registry() -> dict[str, dict[str, str]]:
    """``{relpath: {"sha256": ..., "url": ...}}`` for every known file.

    Raises
    ------
    FetchError
        A row of ``datasets.tsv`` lacks a field or has a malformed checksum (row and field named).
    """
    return read_registry(REGISTRY)


def read_registry(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a dataset registry (``datasets.tsv`` layout), by ``relpath``, checked.

    Raises
    ------
    FetchError
        A row lacks ``relpath``, ``sha256`` or ``url``, has a malformed checksum, or repeats a
        ``relpath`` (file, row and field named).
    """
    out: dict[str, dict[str, str]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for row_no, r in enumerate(csv.DictReader(fh, delimiter="\t"), start=1):
            for field in ("relpath", "sha256", "url"):
                if not r.get(field):
                    raise FetchError(f"{path}, row {row_no}, field '{field}': empty or missing")
            sha = r["sha256"]
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise FetchError(f"{path}, row {row_no}, field 'sha256': {sha!r} is not a "
                                 "SHA-256 hex digest (64 lower-case hex digits)")
            if r["relpath"] in out:
                raise FetchError(f"{path}, row {row_no}, field 'relpath': "
                                 f"{r['relpath']!r} is listed twice")
            out[r["relpath"]] = r
    return out


def cache_dir() -> Path:
    """The user cache folder for downloaded datasets (``PAINEMP_CACHE`` or the platform's)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path(APP_NAME, appauthor=False)


def mirror_dir() -> Path | None:
    """The local mirror named by ``PAINEMP_MIRROR``, if any."""
    env = os.environ.get(MIRROR_ENV)
    return Path(env) if env else None


def offline() -> bool:
    """Whether downloads are switched off (``PAINEMP_OFFLINE`` set to 1, true or yes)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def _verified(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_file(path) == sha


class _DownloadBar:
    """The progress-bar protocol of pooch's HTTP downloader, on an :mod:`analysis.sdm.progress` bar.

    Pooch sets ``total`` (0 when the server sends no length) at each attempt, counts whole
    chunks with ``update``, and after the last chunk calls ``reset()`` and ``update(total)`` to
    fill the bar; here the count is kept within the total and the timing is not restarted.
    """

    def __init__(self, bar):
        self.bar = bar
        self._filling = False

    @property
    def total(self):
        return self.bar.total

    @total.setter
    def total(self, value) -> None:  # a new attempt starts
        self.bar.reset(total=value or None)
        self._filling = False

    def update(self, n: int) -> None:
        total = self.bar.total
        if self._filling and total:
            n = total - self.bar.n
        elif total:
            n = min(n, total - self.bar.n)
        if n > 0:
            self.bar.update(n)

    def reset(self) -> None:
        self._filling = True

    def close(self) -> None:
        self.bar.close()


def _no_pooch_start_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("%s file", "Downloading", "Updating"))


def _download(relpath: str, url: str, sha: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` through pooch, with retries, progress and the checksum."""
    import pooch

    from analysis.sdm.progress import progress

    store = pooch.Pooch(path=dest.parent, base_url="", registry={dest.name: f"sha256:{sha}"},
                        urls={dest.name: url}, retry_if_failed=RETRIES)
    LGR.info("downloading %s from %s", relpath, url)
    pooch_log = pooch.get_logger()  # keeps its retry notices, not the line that repeats ours
    pooch_log.addFilter(_no_pooch_start_line)
    with progress(desc=relpath.rsplit("/", 1)[-1], unit="B", unit_scale=True,
                  logger=LGR) as bar:
        downloader = pooch.HTTPDownloader(progressbar=_DownloadBar(bar), timeout=TIMEOUT_S)
        try:
            store.fetch(dest.name, downloader=downloader)
        except ValueError as exc:  # checksum mismatch after the last attempt, or a bad URL
            raise FetchError(f"{relpath}: download from {url} failed: {' '.join(str(exc).split())}"
                             ) from exc
        except OSError as exc:  # network and HTTP errors (requests' errors are OSErrors)
            raise FetchError(f"{relpath}: could not download {url} after {1 + RETRIES} "
                             f"attempt(s): {exc}") from exc
        finally:
            pooch_log.removeFilter(_no_pooch_start_line)
    os.chmod(dest, 0o666 & ~current_umask())  # pooch's temporary file was private (0600)


def fetch_file(relpath: str, download: bool = True) -> Path:
    """Return a local, verified copy of one registry file.

    Parameters
    ----------
    relpath : str
        Path relative to the dataset root, e.g.
        ``"nimare_data/neurosynth/data-neurosynth_version-7_coordinates.tsv.gz"``.
    download : bool
        Allow a network download when neither the mirror nor the cache has the file.

    Returns
    -------
    pathlib.Path
        The file in the mirror (read in place) or in the cache.

    Raises
    ------
    FetchError
        Unknown file, failed download, or checksum mismatch; the message names the file.
    """
    reg = registry()
    if relpath not in reg:
        raise FetchError(f"{relpath!r} is not in the dataset registry {REGISTRY.name}")
    sha, url = reg[relpath]["sha256"], reg[relpath]["url"]
    mirror = mirror_dir()
    if mirror is not None:
        candidate = mirror / relpath
        if candidate.exists():
            if not _verified(candidate, sha):
                raise FetchError(f"{candidate}: SHA-256 differs from the registry ({sha[:12]}…)")
            return candidate
    cached = cache_dir() / relpath
    if _verified(cached, sha):
        return cached
    stale = " (the cached copy's SHA-256 differs from the registry)" if cached.exists() else ""
    if url == "-":
        raise FetchError(f"{relpath} has no download URL: it comes only with the mirror "
                         f"({MIRROR_ENV}), which does not have it{stale}")
    if not download or offline():
        why = f"{OFFLINE_ENV} is set" if download else "downloads are off"
        raise FetchError(f"{relpath} is neither in the mirror ({MIRROR_ENV}) nor in the cache "
                         f"{cache_dir()}{stale}, and {why}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"{relpath}: cannot create the cache folder {cached.parent} ({exc}); "
                         f"set {CACHE_ENV} to a writable folder") from exc
    _download(relpath, url, sha, cached)
    return cached


def fetch_dataset(prefix: str, download: bool = True) -> Path:
    """Fetch every registry file under ``prefix`` and return the folder holding them.

    Files come from one place (mirror or cache), so the returned folder is complete.
    """
    files = [p for p in registry() if p.startswith(prefix.rstrip("/") + "/")]
    if not files:
        raise FetchError(f"no registry file under {prefix!r}")
    roots = set()
    for rel in files:
        got = fetch_file(rel, download=download)
        roots.add(got.parents[len(Path(rel).relative_to(prefix).parts) - 1])
    if len(roots) != 1:  # part in the mirror, part in the cache: complete the cache
        for rel in files:
            _copy_to_cache(rel)
        return cache_dir() / prefix
    return roots.pop()


def _copy_to_cache(relpath: str) -> None:
    import shutil

    dest = cache_dir() / relpath
    if not _verified(dest, registry()[relpath]["sha256"]):
        with atomic_path(dest) as tmp:
            shutil.copyfile(fetch_file(relpath), tmp)


def nimare_data_dir(download: bool = True) -> Path:
    """Folder laid out as NiMARE's fetchers expect (``NIMARE_DATA``), with Neurosynth and NeuroQuery."""
    fetch_dataset("nimare_data/neurosynth", download)
    return fetch_dataset("nimare_data/neuroquery", download).parent
