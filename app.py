"""LoRA Studio entry point: `python app.py` (= `lorastudio ui`) and the `lorastudio` subcommands."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import cli

    word = argv[0] if argv else ""
    if word == "help" and len(argv) > 1:                  # `lorastudio help train` = `lorastudio train --help`
        return main([argv[1], "--help"])
    if word in ("help", "-h", "--help"):
        print(cli.overview())
        return 0
    if word == "--version":
        print(f"lorastudio {cli.version()}")
        return 0
    if not word or word.startswith("-") or word == "ui":  # `lorastudio` alone, or with UI flags only: the UI
        return launch(argv[1:] if word == "ui" else argv)
    if word in cli.COMMANDS:
        return cli.main(argv)
    print(cli.unknown_command(word), file=sys.stderr)
    return 2


def launch(argv: list[str]) -> int:
    """Prepare the workspace, serve the web UI, and run the local worker (see ui/__main__.py for the flags)."""
    from ui.__main__ import main as run_ui

    return run_ui(argv)


if __name__ == "__main__":
    sys.exit(main())
