"""The command-line interface: every command is wired and documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from analysis import cli


def test_every_command_has_its_module():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_module_entry_point_without_command():
    out = subprocess.run([sys.executable, "-m", "analysis"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "validate-data" in out.stdout


def test_data_errors_exit_nonzero(tmp_path, capsys):
    (tmp_path / "studies.tsv").write_text("not\ta\tstudy table\n", encoding="utf-8")
    (tmp_path / "peaks.tsv").write_text("", encoding="utf-8")
    assert cli.main(["validate-data", "--data", str(tmp_path)]) == 1
    assert "studies.tsv" in capsys.readouterr().err
