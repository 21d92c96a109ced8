"""Errors of the compendium with the location of the problem (configuration key; results folder).

Errors in input data (file, row, field) are the engine's :class:`analysis.sdm.errors.DataError`
and :class:`analysis.sdm.errors.DataErrors`, imported from there.

The command line (:mod:`analysis.cli`) turns each of them into a one-line ``error:`` message and
a non-zero exit status; the traceback is shown only with ``--debug``.
"""

from __future__ import annotations


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


class StaleResults(RuntimeError):
    """A stage's results do not match the current inputs, configuration or code, or were not
    committed whole (the message names the stage and the command that fixes it).
    """
