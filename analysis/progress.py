"""Progress of long steps: a tqdm bar in a terminal, periodic log lines everywhere else.

:func:`progress` returns a :class:`tqdm.tqdm`. When its stream (standard error by default) is a
terminal it is an ordinary bar. Otherwise (CI, output redirected to a log file, a notebook
kernel) no bar is drawn, which keeps logs free of carriage-return noise, and the bar instead
writes a log line through :mod:`logging` whenever ``log_every_pct`` percent more of the total is
done or ``log_every_s`` seconds have passed since the last line, plus one line when it closes::

    INFO analysis.characterisation.databases: Neurosynth incidence: 20/57 blocks (35%), 0:11
    elapsed, about 0:20 left

Counting, rates and the context-manager and iterator protocols are tqdm's own in both modes, so
callers use the object exactly like a tqdm bar. ``TQDM_DISABLE=1`` in the environment turns both
the bar and the log lines off (tqdm reads its defaults from ``TQDM_*`` variables).
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

LGR = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
"""Default seconds between two log lines when no bar is drawn."""
LOG_EVERY_PCT = 10.0
"""Default percentage of the total between two log lines when no bar is drawn."""


class _Discard:
    """A write-only stream that drops everything (the bar's stream in log mode)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, captured output)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LoggedTqdm(tqdm):
    """A tqdm bar that, in log mode, logs periodic summary lines instead of drawing itself.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`tqdm.tqdm`.
    log_mode : bool
        True: draw nothing, log lines through ``logger``; False: an ordinary tqdm bar.
    logger : logging.Logger, optional
        Where the lines go (default: this module's logger).
    log_every_s, log_every_pct : float
        A line when this many seconds have passed or this much more of the total is done
        since the previous line (percentages only count when the total is known).
    """

    def __init__(self, *args, log_mode: bool = False, logger: logging.Logger | None = None,
                 log_every_s: float = LOG_EVERY_S, log_every_pct: float = LOG_EVERY_PCT,
                 **kwargs):
        # set before tqdm's __init__, which already calls display()
        self._log_mode = log_mode
        self._logger = logger or LGR
        self._log_every_s = float(log_every_s)
        self._log_every_pct = float(log_every_pct)
        self._last_log_t = time.monotonic()
        self._last_log_step = 0
        self._last_log_n = None
        self._logged_final = False
        if log_mode:
            kwargs["file"] = _Discard()
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        """Draw the bar (terminal) or maybe log a line (log mode); tqdm calls this to refresh."""
        if not self._log_mode:
            return super().display(msg, pos)
        # tqdm.close() marks the bar disabled before its last display()
        self._maybe_log(final=bool(self.disable))
        return True

    def _maybe_log(self, final: bool) -> None:
        if self._logged_final:
            return
        now = time.monotonic()
        total = self.total
        step = (int(100.0 * self.n / total // self._log_every_pct)
                if total and self._log_every_pct > 0 else 0)
        if final:
            self._logged_final = True
            if self.n == 0 or self.n == self._last_log_n:  # nothing new since the last line
                return
        elif not (step > self._last_log_step or now - self._last_log_t >= self._log_every_s):
            return
        elif self.n == 0:
            return
        self._last_log_t, self._last_log_step, self._last_log_n = now, step, self.n
        self._logger.info("%s", self.log_line(final))

    def log_line(self, final: bool = False) -> str:
        """The summary line: what, how much of the total, elapsed time, estimate or rate."""
        elapsed = self.format_dict["elapsed"]
        total = self.total

        def number(x) -> str:
            if self.unit_scale:
                return self.format_sizeof(x, self.unit, divisor=self.unit_divisor)
            return f"{x:g}" if isinstance(x, float) else str(x)

        unit = "" if self.unit_scale else f" {self.unit}"
        head = f"{self.desc}: " if self.desc else ""
        done = (f"{number(self.n)}/{number(total)}" if total else number(self.n)) + unit
        if total:
            done += f" ({100.0 * self.n / total:.0f}%)"
        text = f"{head}{done}, {self.format_interval(elapsed)} elapsed"
        rate = self.n / elapsed if elapsed > 0 else None
        if total and self.n >= total:
            text += " (done)"
        elif final:
            text += " (done)" if not total else " (stopped)"
        elif total and rate:
            text += f", about {self.format_interval((total - self.n) / rate)} left"
        if self.postfix:
            text += f" [{self.postfix}]"
        return text


def progress(iterable=None, *, desc: str = "", total: float | None = None, unit: str = "it",
             unit_scale: bool = False, leave: bool = False, file=None,
             logger: logging.Logger | None = None, log_every_s: float = LOG_EVERY_S,
             log_every_pct: float = LOG_EVERY_PCT, **kwargs) -> LoggedTqdm:
    """A progress bar for a terminal, or periodic log lines when the output is not one.

    Parameters
    ----------
    iterable : iterable, optional
        Wrapped like ``tqdm(iterable)``; otherwise call ``update(n)``.
    desc : str
        What progresses (the bar's label and the start of each log line).
    total : float, optional
        Expected total (default: ``len(iterable)`` where defined); without it no percentage
        or estimate is given.
    unit : str
        Unit of the count (``"B"`` with ``unit_scale=True`` gives kB, MB, ...).
    unit_scale : bool
        Scale the count with SI prefixes (binary steps of 1024 when ``unit == "B"``).
    leave : bool
        Keep the bar on screen after it closes (terminal only).
    file : stream, optional
        Where a bar is drawn (default: standard error); it decides the mode: a terminal gets
        a bar, anything else log lines.
    logger : logging.Logger, optional
        Logger of the log lines (default: ``analysis.progress``); pass the caller's own.
    log_every_s, log_every_pct : float
        Log mode: a line every this many seconds or percent of the total, whichever first.
    **kwargs
        Passed on to :class:`tqdm.tqdm` (``position``, ``postfix``, ``disable``, ...).

    Returns
    -------
    LoggedTqdm
        Use as a tqdm bar: iterate, ``update(n)``, ``set_postfix_str``, ``close()`` or ``with``.
    """
    stream = file if file is not None else sys.stderr
    if unit == "B" and unit_scale:
        kwargs.setdefault("unit_divisor", 1024)
    return LoggedTqdm(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale,
                      leave=leave, file=stream, log_mode=not is_terminal(stream), logger=logger,
                      log_every_s=log_every_s, log_every_pct=log_every_pct, **kwargs)
