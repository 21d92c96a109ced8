"""Fetch the public datasets the pipeline needs, verified by SHA-256.

The registry ``analysis/datasets.tsv`` lists every file (path relative to the dataset root,
checksum, canonical URL at a pinned commit): Neurosynth v7 and NeuroQuery v1 in NiMARE's layout,
the Yeo-7 / Schaefer-400 2 mm volumes, BrainSpace's HCP group FC matrix, Schaefer-400 conte69
parcellation and conte69 surfaces, and the public SDM-PSI v6.21 run of Enge et al. (2021).

Each file is obtained by the engine's fetcher (:func:`analysis.sdm.datasets.fetch_file`, one
implementation for the engine and the compendium): from the local mirror named by
``PAINEMP_MIRROR`` (read in place), the user cache (``PAINEMP_CACHE`` or the platform's user
cache folder, :func:`cache_dir`), or a download from the canonical URL into the cache (pooch,
with retries and progress; the cache never holds a partial or unverified file), and is checked
against its SHA-256 before use; a mismatch is an error (:class:`FetchError`, naming the file).
This module adds the registry: which files exist, their checksums and URLs.

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
from functools import lru_cache
from pathlib import Path

from analysis.sdm import datasets
from analysis.sdm.datasets import (  # noqa: F401  (the fetcher's settings, one definition)
    APP_NAME,
    CACHE_ENV,
    MIRROR_ENV,
    OFFLINE_ENV,
    TIMEOUT_S,
    FetchError,
    cache_dir,
    mirror_dir,
    offline,
    verified,
)

LGR = logging.getLogger(__name__)

REGISTRY = Path(__file__).with_name("datasets.tsv")
RETRIES = datasets.RETRIES
"""Download attempts after the first one, passed to the engine's fetcher."""


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
    row = reg[relpath]
    return datasets.fetch_file(relpath, None if row["url"] == "-" else row["url"], row["sha256"],
                               download=download, retries=RETRIES, logger=LGR)


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
    if not verified(cache_dir() / relpath, registry()[relpath]["sha256"]):
        datasets.copy_to_cache(relpath, fetch_file(relpath))


def nimare_data_dir(download: bool = True) -> Path:
    """Folder laid out as NiMARE's fetchers expect (``NIMARE_DATA``), with Neurosynth and NeuroQuery."""
    fetch_dataset("nimare_data/neurosynth", download)
    return fetch_dataset("nimare_data/neuroquery", download).parent
