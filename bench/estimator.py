"""Is the memory estimate right? backend/models/estimate.py against the measured peak, per method and sequence length.

    python -m bench.estimator [--lengths 256 1024] [--batch 2] [--steps 3] [--methods lora qlora dora pissa]
                              [--measurements FILE.jsonl]   # compare saved arm results instead of measuring
                              [--append FILE.jsonl]         # also append each new arm's result to this file

An arm is a method, or METHOD+OPTIM for a training.optim other than adamw (lora+adamw_8bit); ALL_METHODS lists
every method of backend/models/methods.py plus lora+adamw_8bit.

Each (method, max_length) runs the studio's SFT stage (`sft.run`, LoRA r=16 all-linear, default batching) for a
few steps in a FRESH subprocess, on synthetic rows whose answers are long enough that every row is cut to exactly
max_length (batch x max_length real tokens every step). Measured peak (CPU) = VmHWM at the end of training minus
VmRSS just after the imports (torch, transformers, peft, trl, datasets, bitsandbytes and the studio's backend), i.e.
before the tokenizer, the rows and the model load; on CUDA it would be torch.cuda.max_memory_allocated.
The estimate is `backend.models.estimate.estimate(config, model_path, parameters)` for this device, total bytes.
Target: |estimate - measured| / measured within 10% for every row. The same subprocesses give the step time
that bench/methods.py turns into tokens/s ratios. bench/estimator-measurements.jsonl keeps the runs behind the
published table (`--measurements` compares them with the current estimate without measuring again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import machine_line, markdown_table, median, registered_model, scratch_workspace

METHODS = ("lora", "qlora", "dora", "pissa")
ALL_METHODS = METHODS + ("qdora", "vera", "ia3", "loha", "lokr", "oft", "adalora", "olora", "eva", "corda", "loftq",
                         "prompt_tuning", "galore", "lora+adamw_8bit")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
MIB = 2 ** 20


def split_arm(arm_name: str) -> tuple[str, str]:
    """'lora+adamw_8bit' -> ('lora', 'adamw_8bit'); a plain method trains with adamw."""
    method, _, optim = arm_name.partition("+")
    return method, optim or "adamw"


def job_config(model: str, data: str, method: str, max_length: int, batch: int, steps: int, batching: str = "auto"):
    from backend.config import JobConfig
    method, optim = split_arm(method)
    return JobConfig.from_dict({
        "model": model, "dataset": data, "method": method, "lora": LORA,
        "training": {"max_steps": steps, "batch_size": batch, "max_length": max_length, "eval_fraction": 0.0,
                     "save_steps": steps + 1, "logging_steps": 1, "seed": 42, "batching": batching,
                     "optim": optim}})


def long_rows_file(folder: Path, rows: int, max_length: int) -> str:
    """Rows whose answer alone is longer than max_length: every row trains exactly max_length tokens."""
    words = ("memory estimate activations weights adapter optimizer states gradient tokens batch length "
             "layer attention projection").split()
    path = folder / f"long-rows-{max_length}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            answer = " ".join(words[(i + j) % len(words)] for j in range(2 * max_length))
            messages = [{"role": "user", "content": f"Describe run {i}."}, {"role": "assistant", "content": answer}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


def arm(model: str, data: str, method: str, max_length: int, batch: int, steps: int, batching: str = "auto") -> dict:
    """One training run in this (fresh) process. Called via `--arm`; prints one JSON line."""
    import bitsandbytes  # noqa: F401 - imported before the baseline like everything else below
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from backend import stages, workspace
    from backend.metrics import read_records

    config = job_config(model, data, method, max_length, batch, steps, batching)
    baseline = _status_kib("VmRSS")
    held = {}

    class Weights(TrainerCallback):  # exact bytes the model holds, and the RSS once it is built
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            held["base"] = _storage_mib(t for n, t in _tensors(model) if not t.requires_grad)
            held["adapter"] = _storage_mib(t for n, t in _tensors(model) if t.requires_grad)
            held["loaded_mib"] = (_status_kib("VmRSS") - baseline) / 1024

    run_dir = workspace.runs_dir() / f"memory-{method.replace('+', '-')}-{max_length}"
    run_dir.mkdir(parents=True, exist_ok=True)
    stages.train(config, run_dir, job_id=run_dir.name, callbacks=[Weights()])
    peak = _status_kib("VmHWM")
    elapsed = [r["elapsed_s"] for r in read_records(run_dir / "metrics.jsonl") if "loss" in r]
    steps_s = [b - a for a, b in zip(elapsed, elapsed[1:])]  # the first (warm-up) step left out
    return {"baseline_mib": baseline / 1024, "peak_mib": peak / 1024, "measured_mib": (peak - baseline) / 1024,
            "step_s": median(steps_s), "tokens_per_step": batch * max_length, "base_weights_mib": held["base"],
            "method": method, "max_length": max_length, "batch": batch, "batching": batching,
            "adapter_mib": held["adapter"], "loaded_mib": held["loaded_mib"]}


def _tensors(model_obj):
    yield from model_obj.named_parameters()
    yield from model_obj.named_buffers()


def _storage_mib(tensors) -> float:
    """Bytes of the distinct storages behind these tensors (tied weights counted once)."""
    seen = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / MIB


def measure(model: str, data: str, method: str, max_length: int, batch: int, steps: int,
            batching: str = "auto") -> dict:
    """`arm` in a fresh subprocess (a clean baseline and its own peak)."""
    command = [sys.executable, "-m", "bench.estimator", "--arm", method, "--data", data, "--model", model,
               "--lengths", str(max_length), "--batch", str(batch), "--steps", str(steps), "--batching", batching]
    output = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ),
                            cwd=Path(__file__).resolve().parent.parent)
    if output.returncode != 0:
        raise RuntimeError(f"{method} @ {max_length} failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def estimated_mib(model: str, method: str, max_length: int, batch: int, steps: int,
                  batching: str = "auto") -> tuple[float, object]:
    from backend import models
    from backend.models import estimate
    info = models.resolve(model)
    est = estimate.estimate(job_config(model, "x", method, max_length, batch, steps, batching), model_path=info.path,
                            parameters=info.parameters)
    return est.total / MIB, est


def prepare(home: Path, model: str, lengths, batch: int, steps: int) -> tuple[str, dict]:
    """The model registered (bundled model converted, or a folder imported) and one rows file per length."""
    model = registered_model(model)
    return model, {n: long_rows_file(home, max(16, batch * (steps + 1)), n) for n in lengths}


def main(lengths=(256, 1024), batch: int = 2, steps: int = 3, model: str = "smollm2-135m-instruct",
         methods=METHODS, measurements: str | None = None, append: str | None = None) -> str:
    """Measure every (method, length) and compare; `measurements`: a JSONL of earlier `arm` results to compare
    instead of measuring again (each line carries its method, max_length, batch and batching); `append`: a JSONL
    each new arm's result is appended to as soon as it is measured."""
    rows, errors = [], []
    with scratch_workspace() as home:
        model, files = prepare(home, model, () if measurements else lengths, batch, steps)
        if measurements:
            runs = [json.loads(line) for line in Path(measurements).read_text().splitlines() if line.strip()]
        else:
            runs = []
            for method in methods:
                for n in lengths:
                    runs.append(measure(model, files[n], method, n, batch, steps))
                    if append:
                        with open(append, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(runs[-1]) + "\n")
        for run in runs:
            estimated, est = estimated_mib(model, run["method"], run["max_length"], run["batch"], steps,
                                           run.get("batching", "auto"))
            error = (estimated - run["measured_mib"]) / run["measured_mib"]
            errors.append(abs(error))
            rows.append([run["method"], run["max_length"], run["batch"], run.get("batching", "auto"),
                         f"{estimated:.0f}", f"{run['measured_mib']:.0f}", f"{error:+.1%}",
                         f"{est.weights / MIB:.0f} / {(est.adapter + est.optimizer) / MIB:.0f} / "
                         f"{est.activations / MIB:.0f} / {est.overhead / MIB:.0f}"])
    table = markdown_table(["method", "max_length", "batch", "batching", "estimate MiB", "measured MiB", "error",
                            "estimate: weights / adapter+optim / activations / overhead"], rows)
    source = f"measurements from {Path(measurements).name}" if measurements else f"{steps} steps per run"
    text = (f"### Memory estimator accuracy ({model}, LoRA r=16 all-linear, rows filling max_length, {source})"
            f"\n\n{machine_line()}\n\n{table}\n\n"
            f"Largest error {max(errors):.1%} (target within 10%). Measured = peak RSS (VmHWM) minus the RSS after "
            f"the imports, before tokenizer / data / model load; each row in a fresh process.\n")
    print(text)
    return text


def _status_kib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batching", default="auto", help="training.batching of every run (default: auto)")
    parser.add_argument("--measurements", help="compare these saved arm results (JSONL) instead of measuring")
    parser.add_argument("--append", help="append each new arm's result (JSON) to this file")
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.model, args.data, args.arm, args.lengths[0], args.batch, args.steps, args.batching)))
    else:
        main(tuple(args.lengths), args.batch, args.steps, args.model, tuple(args.methods), args.measurements,
             args.append)
