"""``python -m analysis export-sdm DIR [--data DATA] [--force]``: studies/peaks → SDM-PSI project.

Besides ``sdm_table.txt`` and the peak files, the folder receives the provenance record
``painemp_provenance.tsv`` (ignored by SDM-PSI), from which ``import-sdm`` restores every
peak's provenance: exported stand-ins come back as stand-ins. A folder that is not empty is
refused unless ``--force``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis import paths
from analysis.data_tables import PEAKS_FILE, STUDIES_FILE, load_studies
from analysis.sdm.inputs.io import read_tsv_text
from analysis.sdm.inputs.peaks import PEAK_COLUMNS
from analysis.sdm.inputs.project import write_sdm_project

EPILOG = """\
examples:
  python -m analysis export-sdm painemp_sdm/               # data/ as an SDM-PSI project folder
  python -m analysis export-sdm other_sdm/ --data my_data
  python -m analysis export-sdm painemp_sdm/ --force       # replace the project in painemp_sdm/
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="destination SDM project folder")
    parser.add_argument("--data", metavar="DATA", default=None,
                        help="folder with studies.tsv and peaks.tsv (default: data/)")
    parser.add_argument("--force", action="store_true",
                        help="replace the SDM project of a folder that is not empty")


def run_command(args: argparse.Namespace) -> int:
    data = Path(args.data) if args.data else paths.data_dir()
    from analysis.config import load_config
    from analysis.stages.params import study_checks

    cfg = load_config()
    studies = load_studies(data, **study_checks(cfg))  # every problem named before writing
    # the text table: its own columns decide the covariates, its cells are written as read
    text = read_tsv_text(data / STUDIES_FILE, required=["study"])
    peaks = read_tsv_text(data / PEAKS_FILE, required=PEAK_COLUMNS)
    write_sdm_project(text, peaks, args.folder, default_covariates=cfg["sdm"]["covariates"],
                      overwrite=args.force, **study_checks(cfg))
    print(f"wrote SDM project with {len(studies)} studies and {len(peaks)} peaks to "
          f"{args.folder}")
    return 0
