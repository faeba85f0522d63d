"""What the reliability probes run on: a workspace with a tiny model, real worker / app subprocesses that a
probe can kill, a real redis-server, and the readings a probe takes of a job (steps logged, checkpoints,
resumes). Used by the tests (tests/reliability, tests/workers) and by bench/reliability.py."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from backend import jobs
from backend.config import JobConfig
from backend.metrics import read_records
from tests import tools

ROOT = Path(__file__).resolve().parents[2]
# small and quick: a checkpoint every 3 steps, a step about every half second with slow_steps
JOB_SETTINGS = {"max_steps": 12, "batch_size": 2, "learning_rate": 1e-3, "max_length": 96, "eval_fraction": 0.0,
                "save_steps": 3, "logging_steps": 1}
# the queue's timings shrunk so a probe sees a dead owner or a stale heartbeat within seconds
FAST_QUEUE_ENV = {"LORASTUDIO_STALE_AFTER_S": "6", "LORASTUDIO_REAP_EVERY_S": "1", "OMP_NUM_THREADS": "1",
                  "MKL_NUM_THREADS": "1"}


def can_unshare() -> bool:
    """A PID namespace of its own (a worker as PID 1, as in a container) needs root and unshare(1)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


class Service:
    """A studio process (`lorastudio worker`, or the app with its embedded worker) in its own process group,
    so a probe can kill the whole group; pid1=True runs it as PID 1 of a new PID namespace."""

    def __init__(self, home: Path, command: list[str], extra_env: dict | None = None, pid1: bool = False):
        self.prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if pid1 else []
        self.command = command
        self.env = dict(os.environ, LORASTUDIO_HOME=str(home), **FAST_QUEUE_ENV,
                        **{k: str(v) for k, v in (extra_env or {}).items()})
        self.log = home / f"{command[2] if len(command) > 2 else 'service'}-{time.monotonic_ns()}.log"
        self.process = None

    def start(self) -> "Service":
        self.process = subprocess.Popen([*self.prefix, *self.command], env=self.env, cwd=ROOT,
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def kill_group(self) -> None:
        self.signal_group(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 120) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill the whole group, also when its leader is gone already (a PID-1 worker outlives `unshare`)."""
        if self.process:
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

    def kill_training_children(self) -> None:
        for child in self.training_children():
            child.send_signal(signal.SIGKILL)


def Worker(home: Path, extra_env: dict | None = None, pid1: bool = False) -> Service:  # noqa: N802 - a kind
    return Service(home, [sys.executable, "-m", "cli", "worker"], extra_env, pid1)


def App(home: Path, port: int, extra_env: dict | None = None, pid1: bool = False) -> Service:  # noqa: N802
    """`python app.py` with its embedded worker (the UI and the worker in one process)."""
    return Service(home, [sys.executable, "app.py", "--port", str(port), "--skip-prepare"], extra_env, pid1)


class Lab:
    """One probe's workspace ($LORASTUDIO_HOME, also in this process), its model, and what it started."""

    def __init__(self, home: Path, model: str):
        self.home, self.model = Path(home), model
        self.started: list[Service] = []

    def worker(self, pid1: bool = False, **env) -> Service:
        return self._keep(Worker(self.home, env, pid1).start())

    def app(self, port: int, pid1: bool = False, **env) -> Service:
        return self._keep(App(self.home, port, env, pid1).start())

    def _keep(self, service: Service) -> Service:
        self.started.append(service)
        return service

    def submit(self, enqueue: bool = True, **training) -> str:
        """A job on the lab's model with JOB_SETTINGS (overridden by `training`), queued unless enqueue=False."""
        config = JobConfig.from_dict({"model": self.model, "dataset": "identity-demo", "lora": {"r": 4, "alpha": 8},
                                      "training": {**JOB_SETTINGS, **training}})
        job = jobs.create(config)
        if enqueue:
            from workers.queue import enqueue as put
            put(job.id)
        return job.id

    def close(self) -> None:
        for service in self.started:
            service.stop()


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
    return [r["step"] for r in read_records(jobs.get(job_id).run_dir / "metrics.jsonl") if "loss" in r]


def resumed_from(job_id: str) -> list[int]:
    """The checkpoint steps the job's attempts resumed from, in order (train.log)."""
    log = (jobs.get(job_id).run_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    return [int(step) for step in re.findall(r"resuming from checkpoint-(\d+)", log)]


def complete_checkpoints(job_id: str) -> list[int]:
    folder = jobs.get(job_id).run_dir / "checkpoints"
    return sorted(int(p.name.split("-")[-1]) for p in folder.glob("checkpoint-*") if (p / "COMPLETE").exists())


def torn_checkpoints(job_id: str) -> list[str]:
    folder = jobs.get(job_id).run_dir / "checkpoints"
    return sorted(p.name for p in folder.glob("checkpoint-*") if not (p / "COMPLETE").exists())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A real redis-server on a free port, without persistence (None url when it is not installed)."""

    def __init__(self, folder: Path):
        self.binary = tools.redis_server()
        self.folder, self.process, self.url = Path(folder), None, None

    def start(self) -> "RedisServer":
        if self.binary is None:
            return self
        port = free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        client = redis.Redis(host="127.0.0.1", port=port)
        wait_until(lambda: _ping(client), 20, "redis-server to start")
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)


def _ping(client) -> bool:
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not up yet
        return False


def build_tiny_model(folder: Path, tokenizer_dir: Path) -> Path:
    """A random 2-layer llama (hidden 64) saved as safetensors with the tokenizer and chat template of
    tokenizer_dir (the bundled model's)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)
