"""Errors with the location of the problem (file, row, field; configuration key; results folder).

The command line (:mod:`analysis.cli`) turns each of them into a one-line ``error:`` message and
a non-zero exit status; the traceback is shown only with ``--debug``.
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


class ConfigError(ValueError):
    """Invalid configuration: an unknown (e.g. misspelt) key or a value of the wrong type.

    Parameters
    ----------
    key : str
        Dotted path of the offending key (e.g. ``sdm.imputations``).
    message : str
        What is wrong and what was expected.
    source : str, optional
        Where the value came from (``config.yaml``, ``--set``, an override mapping).
    """

    def __init__(self, key, message, source=None):
        self.key = str(key)
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}key '{self.key}': {message}")


class ResultsLocked(RuntimeError):
    """Another run holds the lock of the same results folder."""
