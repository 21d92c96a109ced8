"""``python -m analysis verify ARCHIVE``: rebuild an archive offline and compare its results.

In an empty temporary folder: unpack, check ``SHA256SUMS``, build the environment from the
archived ``requirements.lock`` (or reuse ``--python``), run the pipeline with the mode and
configuration recorded in the archived stage manifests and render the manuscript, **offline**
(``PAINEMP_OFFLINE=1``; the archived datasets serve as the mirror), then compare every archived
file of ``results/`` and ``_manuscript/`` with the rebuilt one. Prints a table of the files
that are not identical (different, with the largest absolute difference per TSV column or
NIfTI map; missing; extra) and exits with status 1 on any of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.archive import verify_archive

EPILOG = """\
examples:
  python -m analysis verify dist/painemp-compendium-0.1.0.zip
  python -m analysis verify --quick --python .venv/bin/python dist/painemp-compendium-0.1.0-quick.zip
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", type=Path, help="zip written by python -m analysis archive")
    p.add_argument("--python", type=Path, default=None,
                   help="interpreter of an environment to reuse (default: a new virtualenv "
                        "from the archived requirements.lock, which needs the package index)")
    p.add_argument("--quick", action="store_true",
                   help="the archive holds quick-mode results (a check that fits CI)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="an empty folder to work in, kept afterwards (default: a temporary "
                        "folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--download", action="store_true",
                   help="allow downloading the datasets the archive does not hold (licence)")
    p.add_argument("--all", action="store_true", help="list identical files too")


def run_command(args: argparse.Namespace) -> int:
    rep = verify_archive(args.archive, python=args.python, quick=args.quick or None,
                         workdir=args.workdir, keep=args.keep, download=args.download)
    print(rep.table(all_files=args.all))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in rep.seconds.items()))
    if args.keep or args.workdir:
        print(f"folder kept: {rep.workdir}")
    print("verified: every archived result rebuilt identically" if rep.ok
          else "NOT verified: see the files above")
    return 0 if rep.ok else 1
