"""``python -m analysis import-sdm DIR [--data OUT] [--force]``: SDM project → studies/peaks."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis import paths
from analysis.sdm.project import read_sdm_project, write_data_tables

EPILOG = """\
examples:
  python -m analysis import-sdm sdm_project/ --data my_data
  python -m analysis import-sdm sdm_project/ --force          # replace data/studies.tsv, peaks.tsv
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="SDM-PSI project folder (sdm_table.txt, "
                        "<study>.<software>_<space>.txt)")
    parser.add_argument("--data", metavar="OUT", default=None,
                        help="folder receiving studies.tsv and peaks.tsv (default: data/)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing studies.tsv / peaks.tsv")


def run_command(args: argparse.Namespace) -> int:
    out = Path(args.data) if args.data else paths.data_dir()
    existing = [f for f in ("studies.tsv", "peaks.tsv") if (out / f).exists()]
    if existing and not args.force:
        print(f"error: {out} already has {', '.join(existing)}; use --force to replace")
        return 1
    studies, peaks = read_sdm_project(args.folder)
    from analysis.config import load_config
    from analysis.stages.params import data_checks

    warnings: list[str] = []
    sp, pp = write_data_tables(studies, peaks, out, warnings=warnings,
                               **data_checks(load_config()))
    unknown = int((peaks["stat_type"] == "none").sum())
    print(f"imported {len(studies)} studies and {len(peaks)} peaks ({unknown} without a "
          f"statistic) into {sp.parent}")
    for line in warnings:
        print(f"warning: {line}")
    return 0
