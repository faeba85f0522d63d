"""The `lorastudio` command line (see docs/ARCHITECTURE.md for the contract).

Each command group is one module with `add_parser(subparsers)`; handlers return the exit code. Errors are
one sentence on stderr, never a bare traceback.
"""
from __future__ import annotations

import argparse
import sys

from cli import chat as chat_cmd
from cli import data as data_cmd
from cli import export as export_cmd
from cli import jobs as jobs_cmd
from cli import models as models_cmd
from cli import train as train_cmd
from cli import worker as worker_cmd

GROUPS = [train_cmd, jobs_cmd, chat_cmd, export_cmd, models_cmd, worker_cmd, data_cmd]

COMMANDS = ("train", "models", "data", "jobs", "chat", "export", "worker", "ui")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorastudio", description="LoRA Studio: no-code fine-tuning of chat LLMs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(subparsers)
    return parser


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
