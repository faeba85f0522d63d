"""`lorastudio worker [--gpus 0,1] [--workers N]`: only the queue consumer (another machine, or a service)."""
from __future__ import annotations

import logging


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("worker", help="run the queue consumer (training worker) only")
    parser.add_argument("--gpus", help="comma-separated GPU ids to use (default: every visible GPU, else CPU)")
    parser.add_argument("--workers", type=int, help="consumer threads (default: one per GPU slot)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from workers.consumer import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    run_worker(workers=args.workers, gpus=gpus)
    return 0
