"""Public data files the engine needs, fetched on first use and verified by SHA-256.

Like ``nilearn.datasets`` and NiMARE's ``extract`` module, the engine ships no third-party data:
a file is named by a path relative to a dataset root, its canonical URL (at a pinned commit)
and its SHA-256 (:class:`RemoteFile`), and :func:`fetch_file` returns a local, verified copy.

Lookup order for a file:

1. a local mirror, if the environment variable ``PAINEMP_MIRROR`` names a folder with the same
   layout (read in place, never written);
2. the user cache, ``PAINEMP_CACHE`` or the platform's user cache folder (platformdirs:
   ``~/.cache/painemp-compendium`` on Linux, ``~/Library/Caches/painemp-compendium`` on macOS);
3. a download from the canonical URL into the cache, through pooch (Uieda et al. 2020): up to
   :data:`RETRIES` further attempts after a network error or a checksum mismatch, a progress
   bar in a terminal and periodic log lines otherwise (:mod:`analysis.sdm.progress`). The
   download goes to a temporary file beside its destination and is moved into place only once
   its checksum matches, so the cache never holds a partial or unverified file.

Every file is checked against its SHA-256 before use; a mismatch is an error
(:class:`FetchError`, naming the file), not a warning. With ``PAINEMP_OFFLINE=1``
(:func:`offline`) no download is ever attempted.

The engine's own file is SDM-PSI's grey-matter mask (:data:`SDM_GM_MASK`, loaded by
:func:`analysis.sdm.maps.space.sdm_gm_mask`). The compendium's dataset registry
(``analysis/datasets.tsv``, :mod:`analysis.fetch`) fetches through :func:`fetch_file` too, so
both share one cached copy of each file.

References
----------
Uieda L, Soler SR, Rampin R, van Kemenade H, Turk M, Shapero D, Banihirwe A, Leeman J (2020).
Pooch: a friend to fetch your data files. Journal of Open Source Software 5(45):1943.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

from analysis.sdm.inputs.io import atomic_path, current_umask, sha256_file

LGR = logging.getLogger(__name__)

MIRROR_ENV = "PAINEMP_MIRROR"
OFFLINE_ENV = "PAINEMP_OFFLINE"
CACHE_ENV = "PAINEMP_CACHE"
APP_NAME = "painemp-compendium"
RETRIES = 3
"""Download attempts after the first one (pooch waits 1 s, 2 s, ... between them)."""
TIMEOUT_S = 120
"""Seconds without data before a download attempt fails."""


class FetchError(RuntimeError):
    """A data file could not be obtained or failed its checksum."""


class RemoteFile(NamedTuple):
    """A public file: where it lies under a dataset root, where it comes from, its checksum."""

    relpath: str
    """Path relative to the dataset root (also its place in the mirror and the cache)."""
    url: str
    """Canonical download URL (at a pinned commit)."""
    sha256: str
    """SHA-256 hex digest of the file."""


#: SDM-PSI's grey-matter analysis mask ``gray_matter_2mm`` (2 mm MNI grid, 193,768 voxels), as
#: SDM-PSI v6.21 wrote it into the project folder of Enge, Abdel Rahman & Skeide (2021,
#: NeuroImage 241:118436): github SkeideLab/meta_semantics at commit de53184b,
#: ``results/sdm/sdm_mask.nii.gz``, MIT licence (Copyright (c) 2021 SkeideLab). The same file
#: as the row ``validation/enge2021_sdm/sdm_mask.nii.gz`` of the compendium's dataset registry.
SDM_GM_MASK = RemoteFile(
    relpath="validation/enge2021_sdm/sdm_mask.nii.gz",
    url=("https://github.com/SkeideLab/meta_semantics/raw/"
         "de53184be0ae98ab121a47d5d8e347a0a5e83fa8/results/sdm/sdm_mask.nii.gz"),
    sha256="1c240773399d6ac7d276db8c4feeeffaaf7292e0fb8aa67a3fc6d53dc21ffbae",
)


def cache_dir() -> Path:
    """The user cache folder for downloaded files (``PAINEMP_CACHE`` or the platform's)."""
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


def verified(path: Path, sha256: str) -> bool:
    """Whether ``path`` is a file whose SHA-256 is ``sha256``."""
    return path.is_file() and sha256_file(path) == sha256


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


def _download(relpath: str, url: str, sha256: str, dest: Path, retries: int,
              logger: logging.Logger) -> None:
    """Download ``url`` to ``dest`` through pooch, with retries, progress and the checksum."""
    import pooch

    from analysis.sdm.progress import progress

    store = pooch.Pooch(path=dest.parent, base_url="", registry={dest.name: f"sha256:{sha256}"},
                        urls={dest.name: url}, retry_if_failed=retries)
    logger.info("downloading %s from %s", relpath, url)
    pooch_log = pooch.get_logger()  # keeps its retry notices, not the line that repeats ours
    pooch_log.addFilter(_no_pooch_start_line)
    with progress(desc=relpath.rsplit("/", 1)[-1], unit="B", unit_scale=True,
                  logger=logger) as bar:
        downloader = pooch.HTTPDownloader(progressbar=_DownloadBar(bar), timeout=TIMEOUT_S)
        try:
            store.fetch(dest.name, downloader=downloader)
        except ValueError as exc:  # checksum mismatch after the last attempt, or a bad URL
            raise FetchError(f"{relpath}: download from {url} failed: {' '.join(str(exc).split())}"
                             ) from exc
        except OSError as exc:  # network and HTTP errors (requests' errors are OSErrors)
            raise FetchError(f"{relpath}: could not download {url} after {1 + retries} "
                             f"attempt(s): {exc}") from exc
        finally:
            pooch_log.removeFilter(_no_pooch_start_line)
    os.chmod(dest, 0o666 & ~current_umask())  # pooch's temporary file was private (0600)


def fetch_file(relpath: str, url: str | None, sha256: str, download: bool = True, *,
               retries: int | None = None, logger: logging.Logger | None = None) -> Path:
    """Return a local, verified copy of one public file.

    Parameters
    ----------
    relpath : str
        Path relative to the dataset root, e.g. ``"validation/enge2021_sdm/sdm_mask.nii.gz"``:
        where the file lies in the mirror and in the cache.
    url : str or None
        Canonical download URL; ``None`` for a file that comes only with the mirror.
    sha256 : str
        Expected SHA-256 hex digest.
    download : bool
        Allow a network download when neither the mirror nor the cache has the file.
    retries : int, optional
        Download attempts after the first one (default :data:`RETRIES`).
    logger : logging.Logger, optional
        Where the download and its progress are logged (default this module's).

    Returns
    -------
    pathlib.Path
        The file in the mirror (read in place) or in the cache.

    Raises
    ------
    FetchError
        Checksum mismatch in the mirror, no copy and no download allowed (``download=False``
        or ``PAINEMP_OFFLINE``), an unwritable cache, or a failed download; the message names
        the file.
    """
    mirror = mirror_dir()
    if mirror is not None:
        candidate = mirror / relpath
        if candidate.exists():
            if not verified(candidate, sha256):
                raise FetchError(f"{candidate}: SHA-256 differs from the recorded checksum "
                                 f"({sha256[:12]}…)")
            return candidate
    cached = cache_dir() / relpath
    if verified(cached, sha256):
        return cached
    stale = (" (the cached copy's SHA-256 differs from the recorded checksum)"
             if cached.exists() else "")
    if url is None:
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
    _download(relpath, url, sha256, cached, RETRIES if retries is None else retries,
              LGR if logger is None else logger)
    return cached


def copy_to_cache(relpath: str, source: Path) -> Path:
    """Copy a verified file (e.g. from the mirror) into the cache at ``relpath``, atomically.

    Returns
    -------
    pathlib.Path
        The cached copy.
    """
    dest = cache_dir() / relpath
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    return dest
