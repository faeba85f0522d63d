"""LoRA Studio entry point: `python app.py` (= `lorastudio ui`) and the `lorastudio` subcommands."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import cli

    if argv and argv[0] in cli.COMMANDS and argv[0] != "ui":
        return cli.main(argv)
    if argv and argv[0] == "ui":
        argv = argv[1:]
    return launch(argv)


def launch(argv: list[str]) -> int:
    """Prepare the workspace, serve the web UI, and run the local worker (see ui/__main__.py for the flags)."""
    from ui.__main__ import main as run_ui

    return run_ui(argv)


if __name__ == "__main__":
    sys.exit(main())
