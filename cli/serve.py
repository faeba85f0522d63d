"""`lorastudio serve [--host 127.0.0.1] [--port 8000] [--model NAME] [--adapters JOB ...] [--api-key KEY]`:
one base model with the adapters of finished jobs behind an OpenAI-compatible API (backend/serve/openai_api.py).

Any address but this machine's loopback needs an API key: the API runs models on this machine for whoever
can reach it.
"""
from __future__ import annotations

import os
import sys

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers) -> None:
    from backend.serve.engine import DEFAULT_MAX_ADAPTERS

    parser = subparsers.add_parser("serve", help="a base model and its jobs' adapters as an OpenAI-compatible API")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                             "needs --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--model", help="the base model (default: the base of the first --adapters job, else the "
                                        "bundled model)")
    parser.add_argument("--adapters", nargs="*", default=[], metavar="JOB",
                        help="jobs whose adapters are loaded at start (others load on first use)")
    parser.add_argument("--max-adapters", type=int, default=DEFAULT_MAX_ADAPTERS,
                        help=f"adapters kept in memory, least recently used evicted (default {DEFAULT_MAX_ADAPTERS})")
    parser.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                        help="comma-separated host names clients may use besides this machine's (a reverse proxy's "
                             "name); default $LORASTUDIO_ALLOWED_HOSTS")
    parser.add_argument("--api-key", default=os.environ.get("LORASTUDIO_API_KEY"),
                        help="clients must send 'Authorization: Bearer KEY' (default: $LORASTUDIO_API_KEY)")
    parser.set_defaults(handler=run)


def refusal(host: str, api_key: str | None) -> str | None:
    """Why this address may not be served, or None."""
    if host not in LOCAL_HOSTS and not api_key:
        return (f"serving on {host} lets other machines run models here, so it needs --api-key KEY "
                "(or $LORASTUDIO_API_KEY); without one, serve on 127.0.0.1")
    return None


def run(args) -> int:
    import logging

    why = refusal(args.host, args.api_key)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    import uvicorn

    from backend.hosts import allowed_hosts, parse_allowed_hosts
    from backend.serve.engine import Engine
    from backend.serve.openai_api import build_api

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    engine = Engine(args.model, preload=args.adapters, max_adapters=args.max_adapters)
    print(f"serving {engine.model_name} on http://{args.host}:{args.port}/v1", flush=True)
    allowed = allowed_hosts(args.host) | parse_allowed_hosts(args.allowed_hosts)
    uvicorn.run(build_api(engine, args.api_key, allowed), host=args.host, port=args.port, log_level="info")
    return 0
