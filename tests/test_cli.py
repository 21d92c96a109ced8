"""The command-line interface: every command is wired and documented."""

from __future__ import annotations

import argparse
import shlex
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


def _subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser, sub.choices


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_has_help_and_the_help_shows_an_example(command, capsys):
    _, subs = _subparsers()
    p = subs[command]
    missing = [a.option_strings or a.dest for a in p._actions
               if not a.help or a.help == argparse.SUPPRESS and a.dest != "debug"]
    assert missing == [], f"{command}: options without help text"
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"python -m analysis {command}" in out.split("examples:")[1]


def _example_argvs(epilog: str):
    """The argument lists of the ``python -m analysis ...`` lines of an epilog."""
    for line in epilog.splitlines():
        if "python -m analysis" not in line:
            continue
        words = shlex.split(line.split("  #")[0], comments=False)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefix
            words = words[1:]
        if words[:3] == ["python", "-m", "analysis"] and "<command>" not in words:
            yield words[3:]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_examples_parse(command):
    """Every example of a command's --help is accepted by the parser (nothing is run)."""
    parser, subs = _subparsers()
    argvs = list(_example_argvs(subs[command].epilog))
    assert argvs and all(a[0] == command for a in argvs)
    for argv in argvs:
        parser.parse_args(argv)


def test_top_level_help_examples_parse():
    parser, _ = _subparsers()
    argvs = list(_example_argvs(parser.epilog))
    assert len(argvs) >= 3
    for argv in argvs:
        parser.parse_args(argv)


def test_module_entry_point_without_command():
    out = subprocess.run([sys.executable, "-m", "analysis"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "validate-data" in out.stdout


def test_data_errors_exit_nonzero(tmp_path, capsys):
    (tmp_path / "studies.tsv").write_text("not\ta\tstudy table\n", encoding="utf-8")
    (tmp_path / "peaks.tsv").write_text("", encoding="utf-8")
    assert cli.main(["validate-data", "--data", str(tmp_path)]) == 1
    assert "studies.tsv" in capsys.readouterr().err
