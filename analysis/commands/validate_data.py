"""``python -m analysis validate-data [--data DIR]``: check studies.tsv and peaks.tsv."""

from __future__ import annotations

import argparse

from analysis.validate import format_summary, validate_data

EPILOG = """\
examples:
  python -m analysis validate-data
  python -m analysis validate-data --data my_data --no-mask
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="data folder (default: the repository's data/)")
    parser.add_argument("--no-mask", action="store_true",
                        help="skip the check of coordinates against the brain mask")


def run_command(args: argparse.Namespace) -> int:
    from analysis.config import load_config
    from analysis.stages.params import data_checks

    summary = validate_data(args.data, check_mask=not args.no_mask,
                            **data_checks(load_config()))
    print("data OK")
    print(format_summary(summary))
    return 0
