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
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from analysis.commands.run import config_from_args
from analysis.io import process_alive
from analysis.render import RenderError, render

#: prefix of the private temporary folder of one render (``<prefix><pid>-<random>``)
TEMP_PREFIX = "painemp-jupyter-"

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
    p.add_argument("--output-dir", metavar="DIR", type=Path, default=None,
                   help="write index.html and index.pdf there instead of _manuscript/")


def remove_stale_temp(base: str | os.PathLike | None = None) -> list[Path]:
    """Remove the private temporary folders of renders whose process is gone (killed)."""
    removed = []
    for d in Path(base or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = d.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@contextmanager
def private_temp() -> Iterator[Path]:
    """A private (0700) temporary folder for the render and its Jupyter kernel, removed after.

    The kernel's connection file (which holds the key of its channels) and every temporary file
    of the render, of the kernel and of its kernel spec go there (``JUPYTER_RUNTIME_DIR``,
    ``TMPDIR``, :data:`tempfile.tempdir`). It is removed when the render ends, fails, is
    interrupted (SIGINT) or terminated (SIGTERM, turned into an exit here); a folder left by a
    killed render (SIGKILL) is removed at the next render (:func:`remove_stale_temp`).
    """
    remove_stale_temp()
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    runtime = path / "runtime"
    runtime.mkdir(mode=0o700)
    names = ("JUPYTER_RUNTIME_DIR", "TMPDIR")
    old_env = {k: os.environ.get(k) for k in names}
    old_tempdir = tempfile.tempdir
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _terminate(signum, frame):
            raise SystemExit(128 + signum)
        old_term = signal.signal(signal.SIGTERM, _terminate)
    os.environ.update({"JUPYTER_RUNTIME_DIR": str(runtime), "TMPDIR": str(path)})
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = old_tempdir
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(path, ignore_errors=True)


def run_command(args: argparse.Namespace) -> int:
    try:
        with private_temp():
            engine, out = render(args.engine, allow_missing=args.allow_missing,
                                 config=config_from_args(args), out_dir=args.output_dir)
    except RenderError as exc:
        print(f"error: {exc}")
        return 1
    print(f"manuscript rendered by {engine}: {out}")
    return 0
