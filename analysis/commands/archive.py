"""``python -m analysis archive``: a deterministic, self-verifying zip of the compendium.

Writes ``dist/painemp-compendium-<version>.zip`` (``-quick`` added for quick-mode results) from
a clean git tree: the source at ``HEAD``, the public datasets the licence allows to
redistribute (with ``LICENSES.tsv``), ``results/`` and ``_manuscript/`` of a finished run (the
manuscript rendered again with the commit's date), ``ro-crate-metadata.json`` and
``SHA256SUMS`` (:mod:`analysis.archive`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from analysis.archive import build_archive

EPILOG = """\
examples:
  python -m analysis archive                    # after make paper, on a committed tree
  python -m analysis archive --out-dir ../deposit  # the zip elsewhere
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", type=Path, default=None, help="folder of the zip (default dist/)")
    p.add_argument("--no-render", action="store_true",
                   help="archive _manuscript/ as it is instead of rendering it again")


def run_command(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rep = build_archive(out_dir=args.out_dir, render=not args.no_render)
    print(f"archive: {rep.path}")
    print(f"  {rep.n_files} files, {rep.size / 1e6:.1f} MB, "
          f"{'quick' if rep.quick else 'full'}-run results, {time.perf_counter() - t0:.0f} s")
    print(f"  sha256 {rep.sha256}")
    if rep.excluded_datasets:
        print(f"  {len(rep.excluded_datasets)} dataset file(s) left out (licence): "
              "see LICENSES.tsv")
    return 0
