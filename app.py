"""LoRA Studio entry point: `python app.py` (= `lorastudio ui`) and the `lorastudio` subcommands."""
from __future__ import annotations

import argparse
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
    """Prepare the workspace (bundled model, demo data) and start the app."""
    parser = argparse.ArgumentParser(prog="lorastudio ui", description="Start LoRA Studio.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--workers", type=int, default=None,
                        help="local training workers (default: one per GPU, one on a CPU-only machine)")
    parser.add_argument("--no-workers", action="store_true",
                        help="start no local worker (e.g. workers run elsewhere, sharing a Redis queue)")
    args = parser.parse_args(argv)
    from backend import bootstrap

    print(bootstrap.prepare_workspace(), flush=True)
    if args.no_workers:
        print("No local worker started (--no-workers).")
        return 0
    # The browser UI is not part of this release: the local worker runs in the foreground.
    import logging

    from workers.consumer import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print("The local training worker is running (Ctrl-C stops it; running jobs keep a checkpoint and resume on "
          "the next start).\nSubmit jobs from another terminal, e.g.:  lorastudio train quickstart --wait",
          flush=True)
    run_worker(workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
