"""Fetch the public datasets the pipeline needs, verified by SHA-256.

The registry ``analysis/datasets.tsv`` lists every file (path relative to the dataset root,
checksum, canonical URL at a pinned commit): Neurosynth v7 and NeuroQuery v1 in NiMARE's layout,
the Yeo-7 / Schaefer-400 2 mm volumes, and the public SDM-PSI v6.21 run of Enge et al. (2021).

Lookup order for a file:

1. a local mirror, if the environment variable ``PAINEMP_MIRROR`` names a folder with the same
   layout (read in place, never written);
2. the user cache, ``PAINEMP_CACHE`` or the platform's user cache folder
   (``~/.cache/painemp-compendium`` on Linux);
3. a download from the canonical URL into the cache.

Every file is checked against its SHA-256 before use; a mismatch is an error, not a warning.
"""

from __future__ import annotations

import csv
import logging
import os
import urllib.request
from functools import lru_cache
from pathlib import Path

from analysis.io import atomic_path, sha256_file

LGR = logging.getLogger(__name__)

MIRROR_ENV = "PAINEMP_MIRROR"
CACHE_ENV = "PAINEMP_CACHE"
REGISTRY = Path(__file__).with_name("datasets.tsv")


class FetchError(RuntimeError):
    """A dataset file could not be obtained or failed its checksum."""


@lru_cache(maxsize=1)
def registry() -> dict[str, dict[str, str]]:
    """``{relpath: {"sha256": ..., "url": ...}}`` for every known file."""
    with REGISTRY.open(encoding="utf-8") as fh:
        return {r["relpath"]: r for r in csv.DictReader(fh, delimiter="\t")}


def cache_dir() -> Path:
    """The user cache folder for downloaded datasets."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "painemp-compendium"


def mirror_dir() -> Path | None:
    """The local mirror named by ``PAINEMP_MIRROR``, if any."""
    env = os.environ.get(MIRROR_ENV)
    return Path(env) if env else None


def _verified(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_file(path) == sha


def fetch_file(relpath: str, download: bool = True) -> Path:
    """Return a local, verified copy of one registry file.

    Parameters
    ----------
    relpath : str
        Path relative to the dataset root, e.g.
        ``"nimare_data/neurosynth/data-neurosynth_version-7_coordinates.tsv.gz"``.
    download : bool
        Allow a network download when neither the mirror nor the cache has the file.

    Raises
    ------
    FetchError
        Unknown file, failed download, or checksum mismatch.
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
    if not download or url == "-":
        raise FetchError(
            f"{relpath} is neither in the mirror ({MIRROR_ENV}) nor in the cache {cache_dir()}"
        )
    LGR.info("downloading %s", url)
    try:
        with atomic_path(cached) as tmp:
            with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
                while block := resp.read(1 << 20):
                    out.write(block)
            if sha256_file(tmp) != sha:
                raise FetchError(f"{url}: SHA-256 differs from the registry")
    except OSError as exc:
        raise FetchError(f"could not download {url}: {exc}") from exc
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
