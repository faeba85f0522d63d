"""Real consumer subprocesses on the test's temporary workspace; a real redis-server for the Redis variant."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend import jobs
from backend.metrics import read_records as read_metrics
from backend.config import JobConfig


class Worker:
    """`lorastudio worker` in its own process group, so a test can kill the whole group."""

    def __init__(self, home: Path, extra_env: dict | None = None, pid1: bool = False):
        # pid1: the worker runs as PID 1 of its own PID namespace, as in a container
        self.prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if pid1 else []
        self.env = dict(os.environ, LORASTUDIO_HOME=str(home), LORASTUDIO_STALE_AFTER_S="6",
                        LORASTUDIO_REAP_EVERY_S="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                        **(extra_env or {}))
        self.log = home / f"worker-{time.monotonic_ns()}.log"
        self.process = None

    def start(self) -> "Worker":
        self.process = subprocess.Popen([*self.prefix, sys.executable, "-m", "cli", "worker"], env=self.env,
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def kill_group(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 120) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    def training_children(self) -> list:
        import psutil
        try:
            parent = psutil.Process(self.process.pid)
        except psutil.NoSuchProcess:
            return []
        return [child for child in parent.children(recursive=True)
                if "workers.train_process" in " ".join(child.cmdline())]


@pytest.fixture
def start_worker(workspace):
    started = []

    def start(pid1: bool = False, **extra_env) -> Worker:
        worker = Worker(workspace, {k: str(v) for k, v in extra_env.items()}, pid1=pid1).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def submit(tiny_model):
    """Create a job on the tiny model and put it on the queue; returns the job id."""
    from workers.queue import enqueue

    def submit_job(enqueue_it: bool = True, **training) -> str:
        settings = {"max_steps": 12, "batch_size": 2, "learning_rate": 1e-3, "max_length": 96,
                    "eval_fraction": 0.0, "save_steps": 3, "logging_steps": 1}
        settings.update(training)
        config = JobConfig.from_dict({"model": tiny_model, "dataset": "identity-demo",
                                      "lora": {"r": 4, "alpha": 8}, "training": settings})
        job = jobs.create(config)
        if enqueue_it:
            enqueue(job.id)
        return job.id

    return submit_job


def wait_until(predicate, timeout: float = 180, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_status(job_id: str) -> str:
    return jobs.get(job_id).status


def loss_steps(job_id: str) -> list[int]:
    return [r["step"] for r in read_metrics(jobs.get(job_id).run_dir / "metrics.jsonl") if "loss" in r]


def complete_checkpoints(job_id: str) -> list[int]:
    folder = jobs.get(job_id).run_dir / "checkpoints"
    return sorted(int(p.name.split("-")[-1]) for p in folder.glob("checkpoint-*") if (p / "COMPLETE").exists())


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port (skipped, with the reason, where it cannot be installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (`apt-get install redis-server`; .ci/run installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                               "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    client = redis.Redis(host="127.0.0.1", port=port)
    wait_until(lambda: _ping(client), 20, "redis-server to start")
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def _ping(client) -> bool:
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not up yet
        return False
