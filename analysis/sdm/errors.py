"""Errors of the engine, located by file, row and field.

Every reader and check of :mod:`analysis.sdm` raises these; the compendium's command line turns
them into one-line messages.
"""

from __future__ import annotations


class DataError(ValueError):
    """Invalid input data, located by file, row and field.

    Parameters
    ----------
    file : str
        The offending file.
    message : str
        What is wrong and what was expected.
    row : int, optional
        1-based data row (the header is row 0); ``None`` for whole-file problems.
    field : str, optional
        The column concerned.
    """

    def __init__(self, file, message, row=None, field=None):
        self.file = str(file)
        self.row = row
        self.field = field
        self.message = message
        where = self.file
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class DataErrors(ValueError):
    """Several :class:`DataError` found in one validation pass."""

    def __init__(self, errors):
        self.errors = list(errors)
        lines = [str(e) for e in self.errors]
        super().__init__(f"{len(lines)} data error(s):\n" + "\n".join(lines))
