"""Atomic writes of tables, JSON, figures and images.

Every file under ``results/`` is written to a temporary sibling and moved into place with
:func:`os.replace`, so a reader never sees a half-written file and a failed run leaves the
previous version intact. Files get the permissions of an ordinary new file (``0666`` less the
process umask), not the private ``0600`` of the temporary file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# the atomic primitives are the engine's (analysis.sdm.inputs.io): import them from there
from analysis.sdm.inputs.io import atomic_path, write_text


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write JSON (sorted keys, numpy scalars converted)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    return write_text(path, text + "\n")


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Atomically save a matplotlib figure (format from the destination's suffix).

    ``metadata`` is cleared for SVG/PDF/PNG and the SVG ids are salted with a fixed string, so
    two runs give identical bytes. The figure is saved under matplotlib's default ``savefig.*``
    settings whatever the process changed before: importing NiMARE sets ``savefig.bbox:
    tight`` and ``savefig.dpi: 100`` for the whole process (``nimare/reports/figures.py``), which
    would otherwise make a figure's size and bytes depend on what ran earlier in the process.
    """
    import matplotlib

    path = Path(path)
    fmt = path.suffix.lstrip(".")
    meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {"Software": None}}
    kwargs.setdefault("metadata", meta.get(fmt))
    rc = {k: v for k, v in matplotlib.rcParamsDefault.items() if k.startswith("savefig.")}
    rc["svg.hashsalt"] = "painemp"
    with matplotlib.rc_context(rc), atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
    return path


def save_figure_files(fig, png: str | os.PathLike, svg: str | os.PathLike | None = None,
                      caption: str | None = None, dpi: int = 150) -> None:
    """Save a figure as PNG (and SVG), close it, and write ``<png stem>_caption.txt``."""
    import matplotlib.pyplot as plt

    save_figure(fig, png, dpi=dpi)
    if svg is not None:
        save_figure(fig, svg)
    plt.close(fig)
    if caption is not None:
        write_text(Path(png).with_name(Path(png).stem + "_caption.txt"), caption + "\n")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a folder or lock it left is then still in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
