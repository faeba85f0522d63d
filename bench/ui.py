"""UI latency: the Jobs tab refresh and the Data tab validation of a 10k-row file, idle and while a training
job uses the CPU.

    python -m bench.ui [--repeats 40] [--data-repeats 5] [--jobs 30] [--train-threads 1] [--no-train]

Jobs refresh = one timer tick as the page runs it (ui.jobs_tab.refresh: job table of every job, the selected
running job's detail, metrics chart rebuilt, log tail) plus gr.Plot's handling of the figure, with the shared
view cleared first (worst case: what one change costs; every open page then shares it, see bench/load.py). The workspace holds --jobs finished jobs (200 logged steps each)
and one running job. Data validation = ui.data_tab.check on a 10k-row chat JSONL with the bundled model's
tokenizer (report + token-length histogram + preview). "Training" runs `lorastudio train quickstart --inline`
on the bundled model in a subprocess (OMP threads = --train-threads) during the measurement.
Target: p95 of the Jobs refresh under 300 ms while training.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_line, markdown_table, scratch_workspace


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def seed_jobs(count: int, running: bool = True) -> str | None:
    """`count` finished jobs with 200 logged steps and (unless running=False) one running job (a record, no
    process behind it); returns the running job's id."""
    from backend import jobs
    from backend.config import JobConfig

    def metrics(job, steps):
        with open(job.run_dir / "metrics.jsonl", "w") as handle:
            for step in range(1, steps + 1):
                handle.write(json.dumps({"step": step, "epoch": step / 50, "loss": 2.0 / step ** 0.3,
                                         "learning_rate": 3e-4, "grad_norm": 1.1, "tokens_per_second": 900.0,
                                         "elapsed_s": step * 0.8}) + "\n")
                if step % 20 == 0:
                    handle.write(json.dumps({"step": step, "eval_loss": 2.1 / step ** 0.3}) + "\n")
        (job.run_dir / "train.log").write_text("training line\n" * 2000)

    for _ in range(count):
        job = jobs.create(JobConfig.from_dict({"training": {"max_steps": 200}}))
        metrics(job, 200)
        jobs.update(job.id, status="completed", step=200, results={"final_train_loss": 0.4})
    if not running:
        return None
    running = jobs.create(JobConfig.from_dict({"training": {"max_steps": 400}}))
    metrics(running, 150)
    jobs.update(running.id, status="running", step=150)
    return running.id


def write_chat_rows(path: Path, rows: int) -> Path:
    with open(path, "w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question number {i}: what is {i} plus {i * 3}? " * (1 + i % 4)},
                {"role": "assistant", "content": f"The answer is {i + i * 3}. " * (1 + i % 6)}]}) + "\n")
    return path


def time_refresh(job_id: str, repeats: int) -> list[float]:
    import gradio as gr

    from ui import jobs_tab

    plot = gr.Plot()
    out = []
    statuses = None
    for _ in range(repeats):
        jobs_tab._shared.clear()      # the worst case: every value rebuilt (what a change costs, once for all pages)
        start = time.perf_counter()
        result = jobs_tab.refresh(job_id, statuses, None)
        plot.postprocess(gr.components.plot.PlotData(type="plotly", plot=result.figure))
        out.append((time.perf_counter() - start) * 1000)
        statuses = result.statuses
        time.sleep(0.05)
    return out


def time_validation(path: Path, model: str | None, repeats: int) -> list[float]:
    from ui import data_tab

    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        data_tab.check(str(path), "sft", model, 512)
        out.append((time.perf_counter() - start) * 1000)
    return out


def start_training(home: Path, threads: int):
    env = dict(os.environ, LORASTUDIO_HOME=str(home), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = open(home / "bench-train.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "cli", "train", "quickstart", "--inline",
                                "--set", "training.max_steps=400", "--set", "training.save_steps=1000"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    # wait until the training loop runs (first metrics line), so the measurement overlaps real steps
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if any((home / "runs").glob("*/metrics.jsonl")):
            return process
        time.sleep(1)
    return process


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--data-repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with scratch_workspace() as home:
        from backend import data, models
        data.ensure_demo_datasets()
        try:
            model = models.ensure_bundled_model().name
        except Exception as error:  # noqa: BLE001 - lengths / preview skipped without the model
            print(f"note: no bundled model ({error}); validation runs without a tokenizer", file=sys.stderr)
            model = None
        job_id = seed_jobs(args.jobs)
        big = write_chat_rows(home / "chat-10k.jsonl", args.rows)
        time_refresh(job_id, 3)               # warm-up: imports, plotly templates
        time_validation(big, model, 1)
        from ui import data_tab
        measured = bool(data_tab.validate(str(big), "sft", model, 512).token_lengths)
        if not measured:
            print("note: token lengths were NOT measured (no usable tokenizer)", file=sys.stderr)
        phases = [("idle", None)] + ([] if args.no_train else [("training", "train")])
        for phase, train in phases:
            process = start_training(home, args.train_threads) if train else None
            try:
                if process is not None and process.poll() is not None:
                    print("warning: the training job ended before the measurement", file=sys.stderr)
                refresh = time_refresh(job_id, args.repeats)
                validation = time_validation(big, model, args.data_repeats)
            finally:
                if process is not None:
                    process.terminate()
                    process.wait(60)
            rows.append([f"Jobs refresh ({args.jobs + 1} jobs)", phase, len(refresh), statistics.median(refresh),
                         pct(refresh, 95), "< 300" if phase == "training" else ""])
            rows.append([f"Data validation ({args.rows} rows{', token lengths' if measured else ', no tokenizer'})",
                         phase, len(validation),
                         statistics.median(validation), pct(validation, 95), ""])
    print(machine_line())
    print(markdown_table(["operation", "CPU", "n", "p50 ms", "p95 ms", "target p95 ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
