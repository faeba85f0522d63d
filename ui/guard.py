"""The web server's front door: an ASGI middleware in front of Gradio that every request passes first.

What it refuses, each with one sentence and no work done:
- **a Host that is not this server's** (DNS rebinding; the policy is backend/hosts.py's).
- **a cross-origin request that could change state**: any request whose `Origin` is not this server's own
  origin (or an allowed host's), a non-GET without Origin that the browser marks cross-site
  (`Sec-Fetch-Site`), and `Origin: null` (sandboxed frames, file:// pages).
- **Gradio's named HTTP API** (`/gradio_api/call/...`, `/run/...`, `/api/...`): the UI needs none of it (its
  page talks through the queue), and the command line is the studio's API.
- **repeated failed sign-ins**: after `LORASTUDIO_LOGIN_ATTEMPTS` (5) failures in a row from one address,
  sign-ins from it are refused for `LORASTUDIO_LOGIN_LOCKOUT_S` (1 s), doubling with each further failure up
  to 5 minutes, the right password included (otherwise guessing would simply go on).
- **a file under exports/ that is not a finished download** (a `.partial` file or staging folder, a hidden
  file, the unzipped folder's parts): `is_download(path)` decides.
Plain Starlette; the policy functions are pure and tested without a server.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

# the Host policy is shared with the OpenAI-compatible API; named here too, where the tests and ui/app.py use it
from backend.hosts import allowed_hosts, host_allowed, host_name, machine_names, parse_allowed_hosts  # noqa: F401

NAMED_API_PREFIXES = ("/gradio_api/call/", "/gradio_api/run/", "/gradio_api/api/", "/call/", "/run/", "/api/")
# the page's own route for events that skip the queue (fn_index + session, like queue/join): not a named API
UI_EVENT_PATHS = frozenset({"/gradio_api/run/predict", "/run/predict"})
FILE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/file/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCKOUT_CAP_S = 300.0


def origin_problem(method: str, headers: dict[str, str], trusted: frozenset[str] = frozenset()) -> str | None:
    """Why this request's origin may not use the studio, or None. `headers`: lower-case names; `trusted`: the
    host names the user allowed by name (`--allowed-hosts`), whose pages may call in from any port."""
    origin = headers.get("origin")
    if origin is not None:
        if origin == "null":
            return "requests from a sandboxed or local-file page (Origin: null) are refused"
        parts = urlsplit(origin)
        same_origin = parts.netloc.lower() == headers.get("host", "").lower()
        if not (same_origin or host_name(parts.netloc) in trusted or "*" in trusted):
            return (f"cross-origin request from {origin} refused: only pages served by this studio may use it "
                    "(start it with --allowed-hosts NAME to allow another site)")
        return None
    if method not in SAFE_METHODS and headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        return "cross-site request refused: only pages served by this studio may use it"
    return None


def file_path_of(path: str) -> str | None:
    """The file path a Gradio file URL asks for, or None when the URL is not a file download."""
    for prefix in FILE_PREFIXES:
        if path.startswith(prefix):
            return unquote(path[len(prefix):])
    return None


@dataclass
class LoginThrottle:
    """Failed sign-ins per client address; locks an address out after `attempts` failures in a row."""
    attempts: int = 5
    lockout_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)   # address -> (failures, locked until)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_env(cls) -> "LoginThrottle":
        return cls(attempts=int(os.environ.get("LORASTUDIO_LOGIN_ATTEMPTS") or 5),
                   lockout_s=float(os.environ.get("LORASTUDIO_LOGIN_LOCKOUT_S") or 1.0))

    def wait_s(self, address: str) -> float:
        """Seconds until this address may try again (0: now)."""
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        return max(0.0, until - self.clock())

    def failed(self, address: str) -> None:
        with self._lock:
            count, _ = self._failures.get(address, (0, 0.0))
            count += 1
            until = 0.0
            if count >= self.attempts:
                until = self.clock() + min(LOCKOUT_CAP_S, self.lockout_s * 2 ** (count - self.attempts))
            self._failures[address] = (count, until)
            if len(self._failures) > 10_000:     # many addresses: forget the ones not locked out
                now = self.clock()
                for key in [k for k, (_, u) in self._failures.items() if u <= now]:
                    del self._failures[key]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


class Guard:
    """ASGI middleware: `Guard(app, allowed=..., is_download=..., throttle=...)`."""

    def __init__(self, app, allowed: frozenset[str], exports_dir: Path, is_download: Callable[[Path], bool],
                 trusted: frozenset[str] = frozenset(), throttle: LoginThrottle | None = None):
        self.app = app
        self.allowed = allowed | trusted
        self.trusted = trusted
        self.exports_dir = Path(exports_dir).resolve()
        self.is_download = is_download
        self.throttle = throttle or LoginThrottle.from_env()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET").upper()
        path = scope.get("path", "")
        host = headers.get("host", "")
        if not host_allowed(host, self.allowed):
            return await _refuse(scope, send, 403, f"Host '{host_name(host) or '(none)'}' is not this studio's "
                                 "address; if you reach it under that name on purpose, start it with "
                                 f"--allowed-hosts {host_name(host) or 'NAME'}.")
        problem = origin_problem(method, headers, self.trusted)
        if problem:
            return await _refuse(scope, send, 403, problem[0].upper() + problem[1:] + ".")
        if path.startswith(NAMED_API_PREFIXES) and path.rstrip("/") not in UI_EVENT_PATHS:
            return await _refuse(scope, send, 404, "LoRA Studio's web handlers are not an HTTP API; use the "
                                 "lorastudio command line (lorastudio --help).")
        wanted = file_path_of(path)
        if wanted is not None and self._hidden_export(wanted):
            return await _refuse(scope, send, 404, "Not a finished export: only completed downloads are served.")
        if path.rstrip("/") == "/login" and method == "POST":
            return await self._login(scope, receive, send)
        return await self.app(scope, receive, send)

    def _hidden_export(self, wanted: str) -> bool:
        """True for any path inside exports/ that is not a finished download (checked after resolving)."""
        try:
            resolved = Path(wanted).resolve()
        except (OSError, ValueError):
            return True
        inside = resolved == self.exports_dir or self.exports_dir in resolved.parents
        return inside and not self.is_download(resolved)

    async def _login(self, scope, receive, send):
        address = (scope.get("client") or ("?", 0))[0]
        wait = self.throttle.wait_s(address)
        if wait > 0:
            return await _refuse(scope, send, 429, f"Too many failed sign-ins from {address}; try again in "
                                 f"{max(1, round(wait))} s.", retry_after=wait)
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        code = status.get("code", 0)
        if code == 200:
            self.throttle.succeeded(address)
        elif 400 <= code < 500:
            self.throttle.failed(address)


async def _refuse(scope, send, status: int, sentence: str, retry_after: float | None = None) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": sentence}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
