"""The `lorastudio` command line (see docs/ARCHITECTURE.md for the contract).

Each command group is one module with `add_parser(subparsers)`; handlers return the exit code. Errors are
one sentence on stderr, never a bare traceback.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from importlib import metadata
from pathlib import Path

from cli import adapters as adapters_cmd
from cli import chat as chat_cmd
from cli import data as data_cmd
from cli import eval as eval_cmd
from cli import export as export_cmd
from cli import jobs as jobs_cmd
from cli import models as models_cmd
from cli import serve as serve_cmd
from cli import train as train_cmd
from cli import worker as worker_cmd

# in the order a user meets them; a new command is one module with add_parser(subparsers), added here
GROUPS = [data_cmd, train_cmd, jobs_cmd, chat_cmd, serve_cmd, eval_cmd, export_cmd, adapters_cmd, models_cmd,
          worker_cmd]

UI_SUMMARY = "the web UI and a local worker (the default: `lorastudio` alone starts it)"


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build():
    parser = argparse.ArgumentParser(prog="lorastudio", description="LoRA Studio: no-code fine-tuning of chat LLMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(subparsers)
    return parser, subparsers


def _registered() -> dict[str, str]:
    """Each command the GROUPS register, with the one-line `help=` it passed (argparse keeps those in order)."""
    subparsers = _build()[1]
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    return {name: helps.get(name) or "" for name in subparsers.choices}


SUMMARIES = {"ui": UI_SUMMARY, **_registered()}   # `ui` is app.py's: its parser lives in ui/__main__.py
COMMANDS = tuple(SUMMARIES)


def overview() -> str:
    """`lorastudio --help`: every command with its one-line summary."""
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, text in SUMMARIES.items())
    return ("usage: lorastudio [COMMAND] [options]\n\n"
            "LoRA Studio: no-code fine-tuning of chat LLMs. `lorastudio` alone starts the UI (= `lorastudio ui`).\n\n"
            f"commands:\n{rows}\n\n"
            "`lorastudio COMMAND --help` gives a command's options; `lorastudio --version` prints the version.")


def unknown_command(word: str) -> str:
    close = difflib.get_close_matches(word, COMMANDS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return f"lorastudio: unknown command '{word}'{hint} See lorastudio --help"


def version() -> str:
    """The installed package's version, else the one in pyproject.toml (a source checkout)."""
    try:
        return metadata.version("lorastudio")
    except metadata.PackageNotFoundError:
        try:
            text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
        except OSError:
            return "unknown"
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the user gets one sentence; details go to logs
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":  # python -m cli ...
    sys.exit(main())
