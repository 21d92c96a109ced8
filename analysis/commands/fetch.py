"""``python -m analysis fetch [--list] [DATASET ...]``: obtain the public datasets.

Datasets are the groups of the registry ``analysis/datasets.tsv`` (the first two path components
of each file, e.g. ``nimare_data/neurosynth``). Each file comes from the mirror named by
``PAINEMP_MIRROR``, the user cache, or a download into the cache, and is checked against its
SHA-256 (:mod:`analysis.fetch`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from analysis import fetch

LGR = logging.getLogger(__name__)


def dataset_groups() -> dict[str, list[str]]:
    """``{group: [relpath, ...]}`` of the registry (group = first two path components)."""
    groups: dict[str, list[str]] = {}
    for rel in fetch.registry():
        parts = Path(rel).parts
        key = "/".join(parts[:2]) if len(parts) > 2 else parts[0]
        groups.setdefault(key, []).append(rel)
    return dict(sorted(groups.items()))


def _where(relpath: str) -> str:
    """Where a registry file is available now, without downloading: mirror, cache or missing."""
    sha = fetch.registry()[relpath]["sha256"]
    mirror = fetch.mirror_dir()
    if mirror is not None and (mirror / relpath).is_file():
        return "mirror" if fetch.verified(mirror / relpath, sha) else "mirror (checksum differs)"
    if fetch.verified(fetch.cache_dir() / relpath, sha):
        return "cache"
    return "missing"


def _origin(path: Path) -> str:
    mirror = fetch.mirror_dir()
    if mirror is not None and path.resolve().is_relative_to(mirror.resolve()):
        return "mirror"
    return "cache"


EPILOG = """\
examples:
  python -m analysis fetch --list                      # what is in the mirror, the cache, missing
  python -m analysis fetch nimare_data/neurosynth      # one dataset (downloaded if needed)
  PAINEMP_MIRROR=/data/mirror python -m analysis fetch --no-download

environment:
  PAINEMP_MIRROR   folder with the registry's layout, read in place (never written)
  PAINEMP_CACHE    download cache (default: the platform's user cache folder)
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("datasets", nargs="*", metavar="DATASET",
                   help="registry group(s) to fetch, e.g. nimare_data/neurosynth (default: all)")
    p.add_argument("--list", action="store_true",
                   help="list the registry groups and where each file is available; fetch nothing")
    p.add_argument("--no-download", action="store_true",
                   help="use only the mirror and the cache (fail instead of downloading)")


def run_command(args: argparse.Namespace) -> int:
    groups = dataset_groups()
    wanted = args.datasets or list(groups)
    unknown = [d for d in wanted if d.rstrip("/") not in groups]
    if unknown:
        print(f"error: unknown dataset(s) {', '.join(unknown)}; known: {', '.join(groups)}")
        return 2
    mirror = fetch.mirror_dir()
    print(f"mirror ({fetch.MIRROR_ENV}): {mirror if mirror else '-'}")
    print(f"cache: {fetch.cache_dir()}")
    if args.list:
        for name in wanted:
            files = groups[name.rstrip("/")]
            states = [_where(f) for f in files]
            summary = ", ".join(f"{n} {s}" for s in sorted(set(states))
                                for n in [states.count(s)])
            print(f"{name}\t{len(files)} files\t{summary}")
        return 0
    failed = 0
    for name in wanted:
        name = name.rstrip("/")
        try:
            folder = fetch.fetch_dataset(name, download=not args.no_download)
        except fetch.FetchError as exc:
            print(f"{name}\tFAILED\t{exc}")
            failed += 1
            continue
        print(f"{name}\t{len(groups[name])} files\t{_origin(folder)}\t{folder}")
    return 1 if failed else 0
