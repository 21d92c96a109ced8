"""Command-line interface: ``python -m analysis <command> [options]``.

The Makefile and the manuscript use only this entry point. Each command lives in the module
named in :data:`COMMANDS`, which provides ``configure_parser(parser)`` and
``run_command(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from analysis import __version__
from analysis.errors import ConfigError, ResultsLocked
from analysis.sdm.errors import DataError, DataErrors

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate-data": ("analysis.commands.validate_data", "check the study table and peak table"),
    "run": ("analysis.commands.run", "compute every stage into results/ (valid cached stages reused)"),
    "import-sdm": ("analysis.commands.import_sdm", "import an SDM-PSI project folder into data/"),
    "export-sdm": ("analysis.commands.export_sdm", "export data/ as an SDM-PSI project folder"),
    "simulate-peaks": ("analysis.commands.simulate_peaks", "regenerate the simulated stand-in peaks"),
    "fetch": ("analysis.commands.fetch", "download (or find in the mirror) the public datasets"),
    "meta": ("analysis.commands.meta", "run the SDM-PSI engine on any SDM project folder"),
    "extract": ("analysis.commands.extract", "per-study values and the pooled model at one voxel (SDM-PSI's extract)"),
    "validate-sdm": ("analysis.commands.validate_sdm", "compare the engine with the public SDM-PSI run"),
    "characterise": ("analysis.commands.characterise", "network and behavioural profile of MNI peaks"),
    "render": ("analysis.commands.render", "render the manuscript (Quarto, else pandoc + Typst)"),
    "bench": ("analysis.commands.bench", "speed and memory benchmarks (ratios in the same run)"),
    "archive": ("analysis.commands.archive", "deterministic zip of source, datasets, results and provenance"),
    "verify": ("analysis.commands.verify", "rebuild an archive offline and compare its results"),
}

EPILOG = """\
examples:
  python -m analysis run                 # compute every stage into results/
  python -m analysis render              # render the manuscript into _manuscript/
  python -m analysis fetch --list        # where each public dataset is available
  python -m analysis <command> --help    # options and examples of one command
"""
"""Examples shown under ``python -m analysis --help``; each command module has its own."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Compendium for He et al. 2024 (pain empathy across mental disorders).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"analysis {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=help_,
                           epilog=getattr(mod, "EPILOG", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.configure_parser(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (default: one line)")
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run_command(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (the command line's one boundary)
        if args.debug:
            raise
        for line in error_lines(exc):
            print(f"error: {line}", file=sys.stderr)
        return 1


def error_lines(exc: BaseException) -> list[str]:
    """The one-line message(s) the command line prints for an error (one per data error).

    Located errors (data, configuration, fetch, file system, results lock, bad values) give
    their own message, which names the file, row and field or the configuration key; anything
    else is an internal error, reported with its type and a pointer to ``--debug``.
    """
    from analysis.archive import ArchiveError
    from analysis.sdm.datasets import FetchError

    if isinstance(exc, DataErrors):
        return [f"{len(exc.errors)} data error(s)"] + [_one_line(e) for e in exc.errors]
    if isinstance(exc, OSError) and exc.filename is not None:
        return [f"{exc.strerror or type(exc).__name__}: {exc.filename}"]
    if isinstance(exc, DataError | ConfigError | FetchError | ArchiveError | ResultsLocked
                  | OSError | ValueError):
        return [_one_line(exc)]
    return [f"internal error ({type(exc).__name__}: {_one_line(exc)}); run with --debug for "
            "the traceback"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
