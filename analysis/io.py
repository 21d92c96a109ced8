"""Atomic writes of tables, JSON, figures and images.

Every file under ``results/`` is written to a temporary sibling and moved into place with
:func:`os.replace`, so a reader never sees a half-written file and a failed run leaves the
previous version intact. Files get the permissions of an ordinary new file (``0666`` less the
process umask), not the private ``0600`` of the temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def current_umask() -> int:
    """The process umask (read without changing it where the system allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    Parameters
    ----------
    path : path-like
        Final destination.
    suffix : str, optional
        Suffix of the temporary file (some writers infer the format from it); defaults to the
        destination's full suffix (e.g. ``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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


def write_tsv(path: str | os.PathLike, df, float_format: str | None = None) -> Path:
    """Atomically write a pandas DataFrame as TSV (no index)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format=float_format, lineterminator="\n")
    return Path(path)


def save_nifti(path: str | os.PathLike, img) -> Path:
    """Atomically save a nibabel image (format from the destination's suffix)."""
    with atomic_path(path) as tmp:
        img.to_filename(str(tmp))
    return Path(path)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Atomically save a matplotlib figure (format from the destination's suffix).

    ``metadata`` is cleared for SVG/PDF/PNG so two runs give identical bytes.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".")
    meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {"Software": None}}
    kwargs.setdefault("metadata", meta.get(fmt))
    if fmt == "svg":
        import matplotlib

        matplotlib.rcParams["svg.hashsalt"] = "painemp"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
