"""The OpenAI-compatible API server as a process of its own, started and stopped from the app (the Serve tab).

`lorastudio serve` runs it alone; the app starts the same command as a child process, so a model loaded for
serving never lives in the web server and a failing server takes nothing else down. One server per workspace:
its facts are in serve/server.json (mode 0600: it holds the API key, which the app needs to read the server's
statistics and which is passed to the child in its environment, never on its command line), its output in
serve/server.log. A state file whose process is gone means no server.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from backend import workspace

STATE_FILE = "server.json"
LOG_FILE = "server.log"
DEFAULT_PORT = 8000
START_TIMEOUT_S = 180.0
STATS_PATH = "/studio/stats"


class ServerError(RuntimeError):
    """One sentence for the user."""


@dataclass(frozen=True)
class ServerSettings:
    model: str | None = None              # None: the base of the first adapter, else the bundled model
    adapters: tuple[str, ...] = ()        # jobs loaded at start (others load on first use)
    port: int = DEFAULT_PORT
    api_key: str | None = None
    max_adapters: int = 4


@dataclass
class ServerState:
    pid: int
    port: int
    model: str | None
    adapters: list[str]
    started_at: float
    api_key: str | None = None
    log: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def _state_path() -> Path:
    return workspace.serve_dir() / STATE_FILE


def log_path() -> Path:
    return workspace.serve_dir() / LOG_FILE


def current() -> ServerState | None:
    """The running server of this workspace, or None (a state file left by a dead process is removed)."""
    path = _state_path()
    try:
        state = ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(state.pid):
        return state
    path.unlink(missing_ok=True)
    return None


def _alive(pid: int) -> bool:
    try:
        import psutil
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "serve" in process.cmdline()
    except Exception:  # noqa: BLE001 - gone, or not ours to look at
        return False


def port_problem(port: int) -> str | None:
    if not 1024 <= port <= 65535:
        return f"port {port} is not usable: pick one from 1024 to 65535"
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return f"port {port} is in use by another program: pick another port"
    return None


def start(settings: ServerSettings, timeout_s: float = START_TIMEOUT_S, progress=None) -> ServerState:
    """Start the server and wait until it answers (the base and the named adapters loaded). Raises ServerError
    with one sentence (one already runs, the port is taken, it exited: the last line of its log)."""
    running = current()
    if running is not None:
        raise ServerError(f"a server already runs on {running.url} (pid {running.pid}): stop it first")
    problem = port_problem(settings.port)
    if problem:
        raise ServerError(problem)
    command = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(settings.port),
               "--max-adapters", str(settings.max_adapters)]
    if settings.model:
        command += ["--model", settings.model]
    if settings.adapters:
        command += ["--adapters", *settings.adapters]
    env = dict(os.environ, LORASTUDIO_HOME=str(workspace.home()))
    env.pop("LORASTUDIO_API_KEY", None)
    if settings.api_key:
        env["LORASTUDIO_API_KEY"] = settings.api_key
    log = log_path()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=workspace.PROJECT_ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    state = ServerState(process.pid, settings.port, settings.model, list(settings.adapters), time.time(),
                        settings.api_key, str(log))
    path = _state_path()
    path.write_text(json.dumps(asdict(state)))
    path.chmod(0o600)
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        if process.poll() is not None:
            path.unlink(missing_ok=True)
            raise ServerError(f"the server stopped while starting: {_last_line(log)}")
        if stats(state) is not None:
            return state
        if progress:
            progress(min(0.95, (time.monotonic() - started) / 60), "loading the model")
        time.sleep(0.5)
    stop()
    raise ServerError(f"the server did not answer within {timeout_s:.0f} s: {_last_line(log)}")


def stop(timeout_s: float = 30.0) -> str:
    """Stop the running server; says what happened."""
    state = current()
    if state is None:
        return "No server is running."
    import psutil
    try:
        process = psutil.Process(state.pid)
        process.terminate()
        process.wait(timeout_s)
    except psutil.TimeoutExpired:
        process.kill()
    except psutil.NoSuchProcess:
        pass
    _state_path().unlink(missing_ok=True)
    return f"Server on {state.url} stopped."


def stats(state: ServerState) -> dict | None:
    """The server's own statistics (backend/serve/engine.py Engine.stats), or None while it does not answer."""
    import httpx
    headers = {"Authorization": f"Bearer {state.api_key}"} if state.api_key else {}
    try:
        answer = httpx.get(f"http://127.0.0.1:{state.port}{STATS_PATH}", headers=headers, timeout=5)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["no output"])[-1][:300]
