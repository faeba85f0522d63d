"""Starting and watching the training process of one job.

The process is a child of the consumer thread that runs the job: `python -m workers.train_process JOB_ID`,
or `torchrun --nproc_per_node N -m workers.train_process JOB_ID` for a data-parallel job. Its output goes
to runs/<job_id>/process.log; CUDA_VISIBLE_DEVICES pins it to the job's GPUs.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

from backend import workspace

_running: dict[str, subprocess.Popen] = {}
_running_lock = threading.Lock()


def owner_id() -> str:
    """host:pid:start of this process: one worker *incarnation*. The start time (from /proc) tells a restarted
    worker that got the same pid (PID 1 in a container, always) from the dead one that claimed a job."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc does not say, e.g. not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            # the command name (field 2) may hold spaces; the fields after its closing parenthesis do not
            return handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _parse_owner(owner: str) -> tuple[str, str, str | None]:
    """(host, pid, start or None) of an owner id; `inline:` ids and older host:pid ids included."""
    parts = owner.removeprefix("inline:").split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), parts[-2], parts[-1]
    return ":".join(parts[:-1]), parts[-1], None


def is_dead_owner(owner: str | None) -> bool:
    """True when the owner ran on this host and that process is gone: no such pid, or the pid now belongs to
    another process (a restarted worker with the same pid). Another host's owner: only the heartbeat tells."""
    if not owner or owner == owner_id():
        return False
    host, pid, start = _parse_owner(owner)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(start) and process_start(int(pid)) not in ("", start)


def is_live_local_owner(owner: str | None) -> bool:
    """The owner is a process on this host that is still alive (this worker included)."""
    if not owner:
        return False
    host, pid, _ = _parse_owner(owner)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not is_dead_owner(owner)


def preflight(job) -> str | None:
    """A bad config, model or dataset fails the job before anything heavy loads; the reason, or None."""
    from backend.jobs import preflight as checks

    return "; ".join(checks.problems(job.config)) or None


def run_training_process(job, devices: list[str]) -> int:
    """Start the job's process, wait for it, and return its exit code (negative: killed by that signal)."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = "" if devices == ["cpu"] else ",".join(devices)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    processes = job.config.resources.gpus
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                   "-m", "workers.train_process", job.id]
    else:
        command = [sys.executable, "-m", "workers.train_process", job.id]
    log_path = workspace.run_dir(job.id) / "process.log"
    with open(log_path, "ab") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        with _running_lock:
            _running[job.id] = child
        try:
            return _wait_watching_heartbeat(child, job.id)
        finally:
            with _running_lock:
                _running.pop(job.id, None)


def _wait_watching_heartbeat(child: subprocess.Popen, job_id: str) -> int:
    """Wait for the child; kill it when its heartbeat stops (hung), once it has beaten at least once."""
    import time

    from backend import jobs

    stale_after = float(os.environ.get("LORASTUDIO_STALE_AFTER_S", "120"))
    first_beat = jobs.get(job_id).heartbeat
    while True:
        try:
            return child.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        beat = jobs.get(job_id).heartbeat
        if beat and beat != first_beat and beat < time.time() - stale_after:
            child.kill()  # settled as a crash by the caller: interrupted and re-queued


def running_job_ids() -> list[str]:
    with _running_lock:
        return list(_running)


def terminate_all(grace_s: float) -> None:
    """Last resort at shutdown: SIGTERM (the child saves and stops), then SIGKILL after the grace period."""
    with _running_lock:
        children = list(_running.values())
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the consumer thread that started it dies, so no orphan trains on."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
