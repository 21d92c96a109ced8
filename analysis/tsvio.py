"""Strict reading and canonical writing of the curated TSV files of ``data/``.

The reader never guesses: the file must be UTF-8, non-empty, tab-separated, with one header line
and the same number of fields on every line. Leading and trailing whitespace of every cell and
column name is removed here, once, so the validator, the loaders and every table or value
derived from them see the same text (``"Bird2010 "`` is ``"Bird2010"`` everywhere). Problems are :class:`analysis.errors.DataError`
naming the file, the data row (1 = first line after the header) and the field. All cells are
returned as text; typed parsing is left to the callers (:mod:`analysis.studies`,
:mod:`analysis.peaks`), which report every bad cell at once.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from analysis.errors import DataError

LGR = logging.getLogger(__name__)


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
