"""``python -m analysis import-sdm DIR [--data OUT] [--force] [--source TEXT]``: SDM project →
studies/peaks.

Each peak keeps the provenance recorded by ``export-sdm`` (``painemp_provenance.tsv``) when its
peak file is unchanged. Any other peak is ``sdm-import:<TEXT>`` (counted as real) when
``--source`` declares where the project comes from, else labelled imported, provenance unknown
(``unknown:``), which ``validate-data`` and the manuscript never count as real.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis import paths
from analysis.data_tables import UNKNOWN_LABEL, write_data_tables
from analysis.sdm.inputs.peaks import UNKNOWN_PREFIX
from analysis.sdm.inputs.project import PROVENANCE_FILE, read_sdm_project

EPILOG = """\
examples:
  python -m analysis import-sdm sdm_project/ --data my_data
  python -m analysis import-sdm sdm_project/ --force          # replace data/studies.tsv, peaks.tsv
  python -m analysis import-sdm sdm_project/ --force --source "He et al. 2024, authors' SDM-PSI project"
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="SDM-PSI project folder (sdm_table.txt, "
                        "<study>.<software>_<space>.txt)")
    parser.add_argument("--data", metavar="OUT", default=None,
                        help="folder receiving studies.tsv and peaks.tsv (default: data/)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing studies.tsv / peaks.tsv")
    parser.add_argument("--source", metavar="TEXT", default=None,
                        help="where the project's peaks come from (e.g. the authors' SDM-PSI "
                        "project and its citation); recorded as provenance sdm-import:TEXT and "
                        "counted as real. Without it, peaks that painemp_provenance.tsv does "
                        "not record are labelled imported, provenance unknown")


def run_command(args: argparse.Namespace) -> int:
    out = Path(args.data) if args.data else paths.data_dir()
    existing = [f for f in ("studies.tsv", "peaks.tsv") if (out / f).exists()]
    if existing and not args.force:
        print(f"error: {out} already has {', '.join(existing)}; use --force to replace")
        return 1
    studies, peaks = read_sdm_project(args.folder, source=args.source)
    from analysis.sdm.errors import DataError
    from analysis.sdm.inputs.statmaps import project_map_file

    with_maps = [s for s in studies["study"] if project_map_file(args.folder, s) is not None]
    if with_maps:  # data/ holds peaks only: a map would be dropped without a word
        raise DataError(Path(args.folder).name, f"{len(with_maps)} studies have a statistical "
                        f"map ({', '.join(with_maps[:5])}{', ...' if len(with_maps) > 5 else ''}), "
                        "which studies.tsv / peaks.tsv cannot hold; analyse the folder with "
                        "`meta --sdm-dir` instead", field="study")
    from analysis.config import load_config
    from analysis.stages.params import data_checks

    warnings: list[str] = []
    sp, pp = write_data_tables(studies, peaks, out, warnings=warnings,
                               **data_checks(load_config()))
    unknown = int((peaks["stat_type"] == "none").sum())
    print(f"imported {len(studies)} studies and {len(peaks)} peaks ({unknown} without a "
          f"statistic) into {sp.parent}")
    prov = peaks["provenance"].astype(str)
    no_record = int(prov.str.startswith(UNKNOWN_PREFIX).sum())
    if no_record:
        print(f"warning: {no_record} of {len(peaks)} peaks are labelled {UNKNOWN_LABEL} (no "
              f"record in {PROVENANCE_FILE} and no --source): they are not counted as real")
    for line in warnings:
        print(f"warning: {line}")
    return 0
