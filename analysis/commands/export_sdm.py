"""``python -m analysis export-sdm DIR [--data DATA]``: studies/peaks → SDM-PSI project folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis import paths
from analysis.sdm.io import read_tsv_text
from analysis.sdm.peaks import PEAK_COLUMNS, PEAKS_FILE
from analysis.sdm.project import write_sdm_project
from analysis.sdm.studies import load_studies

EPILOG = """\
examples:
  python -m analysis export-sdm painemp_sdm/               # data/ as an SDM-PSI project folder
  python -m analysis export-sdm other_sdm/ --data my_data
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="destination SDM project folder")
    parser.add_argument("--data", metavar="DATA", default=None,
                        help="folder with studies.tsv and peaks.tsv (default: data/)")


def run_command(args: argparse.Namespace) -> int:
    data = Path(args.data) if args.data else paths.data_dir()
    from analysis.config import load_config
    from analysis.stages.params import study_checks

    cfg = load_config()
    studies = load_studies(data, **study_checks(cfg))
    peaks = read_tsv_text(data / PEAKS_FILE, required=PEAK_COLUMNS)
    write_sdm_project(studies, peaks, args.folder, default_covariates=cfg["sdm"]["covariates"],
                      **study_checks(cfg))
    print(f"wrote SDM project with {len(studies)} studies and {len(peaks)} peaks to "
          f"{args.folder}")
    return 0
