"""``python -m analysis render``: render the manuscript into ``_manuscript/``.

With Quarto on PATH this is ``quarto render`` (HTML and Typst PDF, run with this interpreter as
QUARTO_PYTHON); without it, :func:`analysis.render.render_pandoc` executes the same
``manuscript/index.qmd`` in a Jupyter kernel and converts it with pandoc (``--citeproc``, the
project's Lua filters) into ``_manuscript/index.html`` and, through Typst,
``_manuscript/index.pdf``. Both read only ``results/`` (run ``python -m analysis run`` or ``make paper`` first).

Results that ``run`` would not reuse as they are (an input, the configuration or the code
changed since a stage ran, or a stage was interrupted while committing) are refused with one
line naming the stage and the command that fixes it. Results computed with ``run --config`` or
``--set`` are checked against the same options given to ``render``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.commands.run import config_from_args
from analysis.render import RenderError, render

EPILOG = """\
examples:
  python -m analysis render                    # Quarto if installed, else pandoc + Typst
  python -m analysis render --engine pandoc    # pandoc + Typst even where Quarto is installed
  python -m analysis render --set sdm.imputations=20   # results of run --set sdm.imputations=20
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["auto", "quarto", "pandoc"], default="auto",
                   help="auto: Quarto when installed, else pandoc + Typst (default)")
    p.add_argument("--allow-missing", action="store_true",
                   help="render missing results as visible placeholders (development only)")
    p.add_argument("--config", metavar="FILE", type=Path, default=None,
                   help="the YAML overrides the results were computed with (run --config)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="a configuration override the results were computed with (run --set); "
                        "repeatable")


def run_command(args: argparse.Namespace) -> int:
    try:
        engine, out = render(args.engine, allow_missing=args.allow_missing,
                             config=config_from_args(args))
    except RenderError as exc:
        print(f"error: {exc}")
        return 1
    print(f"manuscript rendered by {engine}: {out}")
    return 0
