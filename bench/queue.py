"""What does the queue cost? Submit -> first logged step through a running worker vs `--inline`, same config,
alternating rounds; and the per-step cost of the heartbeat / metrics / stop-check callbacks.

    python -m bench.queue [--rounds 3] [--model smollm2-135m-instruct]

Targets: the queue adds under 2 s to the first step; the callbacks cost under 1% of a step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_line, markdown_table, median, registered_model, scratch_workspace


def _config_file(folder: Path, model: str, steps: int) -> Path:
    path = folder / "bench-queue.yaml"
    path.write_text(json.dumps({"model": model, "dataset": "identity-demo",
                                "training": {"max_steps": steps, "batch_size": 2, "max_length": 128,
                                             "eval_fraction": 0.0, "save_steps": 1000}}))
    return path


def _first_step_seconds(command: list[str], home: Path, env: dict) -> float:
    """Seconds from starting `command` to the first line of the new job's metrics.jsonl."""
    before = set((home / "runs").glob("*")) if (home / "runs").exists() else set()
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        runs = set((home / "runs").glob("*")) - before if (home / "runs").exists() else set()
        for run in runs:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and metrics.stat().st_size > 0:
                elapsed = time.monotonic() - started
                process.wait(timeout=600)
                return elapsed
        if process.poll() is not None and process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed")
        time.sleep(0.05)


def callback_cost_per_step(home: Path, model: str, calls: int = 200) -> float:
    """Seconds per step spent in the studio's per-step callbacks (SQLite heartbeat + stop check + metrics)."""
    from types import SimpleNamespace

    from backend import jobs
    from backend.jobs.callbacks import HooksCallback, JobHooks, MetricsCallback
    from backend.config import JobConfig

    job = jobs.create(JobConfig.from_dict({"model": model}))
    last_read = [0.0]

    def should_stop():  # the runner's stop check: one SQLite read a second at most
        if time.monotonic() - last_read[0] >= 1.0:
            last_read[0] = time.monotonic()
            return jobs.get(job.id).control
        return None

    hooks = JobHooks(on_step=lambda step, total: jobs.update(job.id, step=step, total_steps=total,
                                                             heartbeat=time.time()), should_stop=should_stop)
    hook_cb, metrics_cb = HooksCallback(hooks), MetricsCallback(home / "bench-metrics.jsonl")
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    args = SimpleNamespace(per_device_train_batch_size=2)
    started = time.perf_counter()
    for step in range(1, calls + 1):
        state = SimpleNamespace(global_step=step, max_steps=calls, epoch=0.1, is_world_process_zero=True,
                                num_input_tokens_seen=step * 100)
        hook_cb.on_step_end(args, state, control)
        metrics_cb.on_log(args, state, control, logs={"loss": 1.0, "grad_norm": 0.5, "learning_rate": 1e-4,
                                                      "num_tokens": step * 100.0})
    return (time.perf_counter() - started) / calls


def main(rounds: int = 3, model: str = "smollm2-135m-instruct", steps: int = 3) -> str:
    queue_times, inline_times = [], []
    with scratch_workspace() as home:
        model = registered_model(model)
        config = _config_file(home, model, steps)
        env = dict(os.environ, LORASTUDIO_HOME=str(home))
        worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)  # the worker is up and idle before the first submit, as in normal use
            for _ in range(rounds):
                queue_times.append(_first_step_seconds([sys.executable, "-m", "cli", "train", str(config), "--wait"],
                                                       home, env))
                inline_times.append(_first_step_seconds([sys.executable, "-m", "cli", "train", str(config),
                                                         "--inline"], home, env))
        finally:
            worker.terminate()
            worker.wait(timeout=120)
        step_times = []
        from backend import jobs
        from backend.metrics import read_records as read_metrics
        for job in jobs.list_jobs():
            records = [r for r in read_metrics(job.run_dir / "metrics.jsonl") if "loss" in r]
            step_times += [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(records, records[1:])]
        per_step = callback_cost_per_step(home, model)
    added = median(queue_times) - median(inline_times)
    step = median(step_times)
    table = markdown_table(
        ["measure", "median", "all runs", "target"],
        [["submit -> first step, queue (s)", median(queue_times), ", ".join(f"{v:.2f}" for v in queue_times), ""],
         ["submit -> first step, --inline (s)", median(inline_times), ", ".join(f"{v:.2f}" for v in inline_times), ""],
         ["added by the queue (s)", added, "", "< 2 s"],
         ["callbacks per step (ms)", per_step * 1000, "", ""],
         ["training step (ms)", step * 1000, f"{len(step_times)} steps", ""],
         ["callbacks / step (%)", 100 * per_step / step if step else float("nan"), "", "< 1 %"]])
    text = f"### Queue overhead ({model}, {steps} steps per job)\n\n{machine_line()}\n\n{table}\n"
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    main(args.rounds, args.model, args.steps)
