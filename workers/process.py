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
from dataclasses import dataclass

from backend import workspace
from backend.jobs.owner import (  # noqa: F401 - the worker's view of owners, re-exported for the consumer
    is_dead_owner, is_live_local_owner, kill_local_process, owner_id)

_running: dict[str, subprocess.Popen] = {}
_running_lock = threading.Lock()


def preflight(job) -> str | None:
    """A bad config, model or dataset fails the job before anything heavy loads; the reason, or None."""
    from backend.jobs import preflight as checks

    return "; ".join(checks.problems(job.config)) or None


@dataclass(frozen=True)
class Exit:
    """How a training process ended: its exit code (negative: the signal), and why the worker killed it."""
    code: int
    killed_because: str | None = None

    def describe(self) -> str:
        return self.killed_because or f"the training process died ({describe_exit(self.code)})"


def run_training_process(job, devices: list[str]) -> Exit:
    """Start the job's process, wait for it, and return how it ended."""
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


# a process that has not beaten yet (imports, CUDA start-up) gets this long before it counts as hung
STARTUP_GRACE_S = 120.0


def _wait_watching_heartbeat(child: subprocess.Popen, job_id: str) -> Exit:
    """Wait for the child; kill it when its heartbeat stops (hung or stalled; see backend.jobs.runner)."""
    import time

    from backend import jobs

    stale_after = float(os.environ.get("LORASTUDIO_STALE_AFTER_S", "120"))
    started = time.time()
    first_beat = jobs.get(job_id).heartbeat
    while True:
        try:
            return Exit(child.wait(timeout=1.0))
        except subprocess.TimeoutExpired:
            pass
        try:
            beat = jobs.get(job_id).heartbeat or started
        except Exception:  # noqa: BLE001 - a busy (or full) database: look again next second
            continue
        allowed = stale_after if beat != first_beat else max(stale_after, STARTUP_GRACE_S)
        if beat < time.time() - allowed:
            child.kill()  # settled as a crash by the caller: interrupted and re-queued
            code = child.wait()
            return Exit(code, f"the training process stopped beating for {time.time() - beat:.0f} s "
                              "(hung, or no training progress) and was killed")


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
