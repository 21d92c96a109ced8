"""Files of the engine: atomic writes, and strict reading of tab-separated tables.

Writes go to a temporary sibling moved into place with :func:`os.replace` (a reader never sees
a half-written file; a failure leaves the previous version intact), with the permissions of an
ordinary new file (``0666`` less the process umask).

Reading tables:

The reader never guesses: the file must be UTF-8, non-empty, tab-separated, with one header line
and the same number of fields on every line. Leading and trailing whitespace of every cell and
column name is removed here, once, so the validator, the loaders and every table or value
derived from them see the same text (``"Bird2010 "`` is ``"Bird2010"`` everywhere). Problems are :class:`analysis.sdm.errors.DataError`
naming the file, the data row (1 = first line after the header) and the field. All cells are
returned as text; typed parsing is left to the callers (:mod:`analysis.sdm.inputs.studies`,
:mod:`analysis.sdm.inputs.peaks`), which report every bad cell at once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from analysis.sdm.errors import DataError

LGR = logging.getLogger(__name__)


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
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~current_umask())
            os.replace(tmp_path, path)
        except OSError as exc:
            if exc.filename is None or Path(exc.filename) == tmp_path:
                # e.g. a full disk: name the file being written, not its temporary name
                raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
            raise
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_tsv_text(path: str | Path, required: list[str] | None = None,
                  allowed: list[str] | None = None) -> pd.DataFrame:
    """Read a TSV file as text cells, checking its structure.

    Parameters
    ----------
    path : path-like
        The file.
    required : list of str, optional
        Columns that must be present.
    allowed : list of str, optional
        If given, the only columns that may be present (``required`` must be a subset).

    Returns
    -------
    pandas.DataFrame
        One row per data line, all cells ``str`` stripped of leading and trailing whitespace
        (empty string for a blank cell), index = data row number (1-based), columns (also
        stripped) in file order.

    Raises
    ------
    DataError
        Missing file, not UTF-8, empty, duplicated/missing/unknown column, or a line whose
        number of fields differs from the header's.
    """
    path = Path(path)
    name = path.name
    if path.is_dir():
        raise DataError(name, f"is a folder, not a file: {path}")
    if not path.is_file():
        raise DataError(name, f"file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n")  # 0 = header line
        col = raw[: exc.start].rsplit(b"\n", 1)[-1].count(b"\t")
        header = raw.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r").split("\t")
        field = header[col] if line > 0 and col < len(header) else None
        raise DataError(name, f"not valid UTF-8 (byte {exc.start}: {exc.reason}); save the file as "
                        "UTF-8", row=line, field=field) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    while lines and lines[-1].strip("\r") == "":
        lines.pop()
    if not lines:
        raise DataError(name, "the file is empty (expected a tab-separated header line and rows)",
                        row=0)
    header = [c.strip() for c in lines[0].rstrip("\r").split("\t")]
    seen = set()
    for col in header:
        if col.strip() == "":
            raise DataError(name, "empty column name in the header (is the file tab-separated?)",
                            row=0)
        if col in seen:
            raise DataError(name, "duplicated column in the header", row=0, field=col)
        seen.add(col)
    for col in required or []:
        if col not in seen:
            raise DataError(name, f"required column is missing (header: {header})", row=0,
                            field=col)
    if allowed is not None:
        for col in header:
            if col not in allowed:
                raise DataError(name, f"unknown column; expected exactly {allowed}", row=0,
                                field=col)
    rows = []
    for i, line in enumerate(lines[1:], start=1):
        cells = line.rstrip("\r").split("\t")
        if len(cells) != len(header):
            field = header[len(cells)] if len(cells) < len(header) else None
            raise DataError(name, f"{len(cells)} tab-separated fields, but the header has "
                            f"{len(header)}", row=i, field=field)
        rows.append([c.strip() for c in cells])
    return pd.DataFrame(rows, columns=header, index=pd.RangeIndex(1, len(rows) + 1), dtype=object)


def format_number(value) -> str:
    """Shortest text that reads back to the same float; integers without a decimal point.

    Blank for NaN / None. Used by the canonical writers so that write → read is lossless.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    v = float(value)
    if math.isnan(v):
        return ""
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)
