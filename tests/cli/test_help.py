"""The front door: `lorastudio --help` lists every registered command, an unknown word is lorastudio's own error,
`--version`, and `lorastudio` with UI flags only still reaches the UI's parser. All in process, no server."""
import argparse
import re

import pytest

import app
import cli


def run(capsys, *argv):
    """app.main(argv) -> (exit code, stdout, stderr); argparse's SystemExit counts as the exit code."""
    try:
        code = app.main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_every_registered_command_has_a_summary():
    assert cli.COMMANDS[0] == "ui" and "eval" in cli.COMMANDS
    for group in cli.GROUPS:          # each module's own registration is in COMMANDS: no second list to keep
        subparsers = argparse.ArgumentParser(prog="lorastudio").add_subparsers()
        group.add_parser(subparsers)
        assert subparsers.choices and set(subparsers.choices) <= set(cli.COMMANDS), group.__name__
    assert all(cli.SUMMARIES[name].strip() for name in cli.COMMANDS)


@pytest.mark.parametrize("word", ["--help", "-h", "help"])
def test_help_lists_every_command_with_its_summary(capsys, word):
    code, out, _ = run(capsys, word)
    assert code == 0
    for name in cli.COMMANDS:
        assert re.search(rf"^  {name}\s+{re.escape(cli.SUMMARIES[name])}$", out, re.MULTILINE), name
    assert "`lorastudio` alone starts the UI" in out and "lorastudio COMMAND --help" in out


def test_help_word_with_a_command_gives_its_options(capsys):
    code, out, _ = run(capsys, "help", "export")
    assert code == 0 and out.startswith("usage: lorastudio export")


@pytest.mark.parametrize("word, hint", [("exprot", "; did you mean 'export'?"), ("zzzz", ".")])
def test_an_unknown_word_is_lorastudios_own_error(capsys, monkeypatch, word, hint):
    monkeypatch.setattr(app, "launch", lambda argv: pytest.fail("the UI was started"))
    code, out, err = run(capsys, word, "--flag")
    assert code == 2 and out == ""
    assert f"unknown command '{word}'{hint} See lorastudio --help" in err
    assert "lorastudio ui" not in err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and re.fullmatch(r"lorastudio \d+\.\d+\S*\n", out)


@pytest.mark.parametrize("argv", [[], ["--port", "8080"], ["ui", "--port", "8080"]])
def test_no_word_or_ui_flags_only_reach_the_ui(monkeypatch, argv):
    seen = []
    monkeypatch.setattr(app, "launch", lambda rest: seen.append(rest) or 0)
    assert app.main(argv) == 0
    assert seen == [[a for a in argv if a != "ui"]]


def test_ui_flags_reach_the_ui_parser(monkeypatch):
    import ui.__main__ as ui_main

    parsed = []

    def parse_only(argv):               # the UI's real parser, then stop before any server starts
        parsed.append(ui_main.build_parser().parse_args(argv))
        return 0

    monkeypatch.setattr(ui_main, "main", parse_only)
    assert app.main(["--port", "8080", "--no-workers"]) == 0
    assert parsed[0].port == 8080 and parsed[0].no_workers


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_each_command_help_names_lorastudio_and_itself(capsys, name):
    code, out, _ = run(capsys, name, "--help")
    assert code == 0 and out.startswith(f"usage: lorastudio {name} ")
