"""Progress helper: a bar in a terminal, log lines elsewhere."""

from __future__ import annotations

import io
import logging

from analysis.progress import is_terminal, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="analysis.progress")
    out = io.StringIO()
    bar = progress(desc="blocks", total=40, unit="block", file=out, log_every_pct=25,
                   log_every_s=1e9, mininterval=0)
    for _ in range(40):
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [
        "blocks: 10/40 block (25%)", "blocks: 20/40 block (50%)", "blocks: 30/40 block (75%)",
        "blocks: 40/40 block (100%)"]
    assert lines[-1].endswith("(done)") and "left" in lines[0]
    assert out.getvalue() == ""  # no bar, no carriage returns


def test_time_based_lines_without_total_and_final_line(caplog):
    caplog.set_level(logging.INFO, logger="x")
    bar = progress(desc="studies", unit="study", file=io.StringIO(), log_every_s=0,
                   mininterval=0, logger=logging.getLogger("x"))
    bar.update(3)
    bar.update(4)
    bar.close()  # nothing new since the last line: no repeat
    msgs = [r.getMessage() for r in caplog.records]
    assert [m.split(",")[0] for m in msgs] == ["studies: 3 study", "studies: 7 study"]
    assert all(r.name == "x" for r in caplog.records)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="analysis.progress")
    with progress(desc="quiet", file=io.StringIO(), log_every_s=1e9) as bar:
        bar.update(5)
    assert [r.getMessage() for r in caplog.records] == ["quiet: 5 it, 00:00 elapsed (done)"]


def test_interrupted_work_says_stopped(caplog):
    caplog.set_level(logging.INFO, logger="analysis.progress")
    with progress(iterable=range(10), desc="loop", file=io.StringIO(), log_every_s=1e9) as bar:
        for i in bar:
            if i == 2:
                break
    assert caplog.records[-1].getMessage().endswith("(stopped)")


def test_bar_in_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="analysis.progress")
    term = _Terminal()
    assert is_terminal(term) and not is_terminal(io.StringIO())
    assert list(progress(range(5), desc="tty", file=term)) == list(range(5))
    assert "tty" in term.getvalue() and "\r" in term.getvalue()
    assert caplog.records == []


def test_byte_units(caplog):
    caplog.set_level(logging.INFO, logger="analysis.progress")
    with progress(desc="file.gz", total=3 * 1024**2, unit="B", unit_scale=True,
                  file=io.StringIO(), log_every_s=1e9) as bar:
        bar.update(3 * 1024**2)
    assert caplog.records[-1].getMessage().startswith("file.gz: 3.00MB/3.00MB (100%)")
