"""``python -m analysis render``: render the manuscript into ``_manuscript/``.

With Quarto on PATH this is ``quarto render`` (HTML and Typst PDF, run with this interpreter as
QUARTO_PYTHON); without it, :func:`analysis.render.render_pandoc` executes the same
``manuscript/index.qmd`` in a Jupyter kernel and converts it with pandoc (``--citeproc``, the
project's Lua filters) into ``_manuscript/index.html`` and, through Typst,
``_manuscript/index.pdf``. Both read only ``results/`` (run ``python -m analysis run`` or ``make paper`` first).
"""

from __future__ import annotations

import argparse

from analysis.render import RenderError, render

EPILOG = """\
examples:
  python -m analysis render                    # Quarto if installed, else pandoc + Typst
  python -m analysis render --engine pandoc    # pandoc + Typst even where Quarto is installed
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["auto", "quarto", "pandoc"], default="auto",
                   help="auto: Quarto when installed, else pandoc + Typst (default)")
    p.add_argument("--allow-missing", action="store_true",
                   help="render missing results as visible placeholders (development only)")


def run_command(args: argparse.Namespace) -> int:
    try:
        engine, out = render(args.engine, allow_missing=args.allow_missing)
    except RenderError as exc:
        print(f"error: {exc}")
        return 1
    print(f"manuscript rendered by {engine}: {out}")
    return 0
