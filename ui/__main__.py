"""`python -m ui [--host H] [--port P] [--auth user:pass] [--allowed-hosts NAMES] [--share] [--max-upload-mb N]
[--workers N | --no-workers]`

The UI next to the local worker. The web
server runs in background threads below the training's priority (nice +5, LORASTUDIO_UI_NICE); the worker runs
in the main thread (it owns SIGTERM / SIGINT: running jobs keep a checkpoint and resume at the next start).
With --no-workers the web server runs alone.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

DEFAULT_UI_NICE = 5


def build_parser() -> argparse.ArgumentParser:
    from ui.app import DEFAULT_HOST, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    parser = argparse.ArgumentParser(prog="lorastudio ui", description="Start LoRA Studio (web UI + local worker).")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    parser.add_argument("--auth", default=None, metavar="USER:PASS",
                        help="ask for this user and password (or set LORASTUDIO_AUTH=user:pass)")
    parser.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                        help="comma-separated host names besides this machine's that browsers may use to reach "
                             "the studio, e.g. a reverse proxy's (or LORASTUDIO_ALLOWED_HOSTS); others are refused")
    parser.add_argument("--share", action="store_true",
                        help="also create a PUBLIC gradio.live link (off unless given; use with --auth)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest dataset upload in MB (default 1024)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local training workers (default: one per GPU, one on a CPU-only machine)")
    parser.add_argument("--no-workers", action="store_true",
                        help="start no local worker (e.g. workers run elsewhere, sharing a Redis queue)")
    parser.add_argument("--skip-prepare", action="store_true", help=argparse.SUPPRESS)   # tests
    return parser


def ui_nice() -> int:
    return int(os.environ.get("LORASTUDIO_UI_NICE", str(DEFAULT_UI_NICE)))


def launch_below_training(**launch_args):
    """Start the web server in threads that yield the CPU to training. Linux keeps a nice value per thread and
    a new thread inherits its creator's: the server is started from a thread at nice +LORASTUDIO_UI_NICE (5),
    so its event loop and handler threads run below the worker, which stays in the main thread at the user's
    priority with the training processes it starts. Many open pages then slow each other, not the training."""
    from ui.app import launch

    started = {}

    def start():
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + ui_nice())
        except (OSError, AttributeError):   # not Linux, or not allowed: the server runs at the usual priority
            pass
        try:
            started["app"] = launch(**launch_args)
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            started["error"] = error

    starter = threading.Thread(target=start, name="lorastudio-ui-start")
    starter.start()
    starter.join()
    if "error" in started:
        raise started["error"]
    return started["app"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ui.app import parse_auth

    try:
        parse_auth(args.auth)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.skip_prepare:
        from backend import bootstrap
        print(bootstrap.prepare_workspace(), flush=True)
    else:
        from backend import data
        data.ensure_demo_datasets()
    app = launch_below_training(host=args.host, port=args.port, auth=args.auth, share=args.share,
                                max_upload_mb=args.max_upload_mb, prevent_thread_lock=True,
                                allowed_hosts=args.allowed_hosts)
    print(f"LoRA Studio is running at http://{args.host}:{args.port}", flush=True)
    try:
        if args.no_workers:
            print("No local worker started (--no-workers).", flush=True)
            threading.Event().wait()
        else:
            from workers.consumer import run_worker
            run_worker(workers=args.workers)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
