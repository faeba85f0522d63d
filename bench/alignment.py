"""What does alignment cost? DPO vs SFT step time on the same sequences, and DPO's peak memory with the
adapter-disabled reference vs a second reference copy of the base.

    python -m bench.alignment [--steps 12] [--rounds 2] [--batch 4] [--model smollm2-135m-instruct]

Step time: both arms run the studio's stages (sft.run, dpo.run) with LoRA r=16 on the concise-pairs demo. A DPO
step of batch B trains on B chosen and B rejected conversations, so the SFT arm trains on exactly those 2B
conversations per step (prompt + chosen and prompt + rejected as SFT rows, batch 2B): what remains is the
reference forward. Median per-step time from metrics.jsonl, first step (warm-up) left out. Target: DPO / SFT
<= 1.6 (policy forward + backward is about 3 forwards; the reference adds one: about 1.33).
Memory: one subprocess per arm (clean baseline), a few steps each; the exact bytes of model weights held (model
+ TRL's ref_model, distinct storages) and the peak RSS growth from just before the model loads to the end of
training (activations included, so it drifts with batch lengths and the allocator). The reference arms differ only in the reference: adapter disabled (the studio's way) vs a second
copy of the base passed to TRL as ref_model. Target: the studio arm holds no second copy, i.e. it grows by
about one base model less.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import machine_line, markdown_table, median, scratch_workspace

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


def job_config(model: str, stage: str, dataset: str, steps: int, batch: int):
    from backend.config import JobConfig

    return JobConfig.from_dict({
        "model": model, "dataset": dataset, "stage": stage, "method": "lora", "lora": LORA,
        "training": {"max_steps": steps, "batch_size": batch, "learning_rate": 5e-5, "max_length": 256,
                     "eval_fraction": 0.0, "save_steps": steps + 1, "seed": 42, "logging_steps": 1}})


def sft_rows_file(folder: Path) -> str:
    """Every pair as two SFT conversations: the sequences a DPO step sees, as plain SFT rows."""
    from backend.data.demo import concise_pair_rows

    path = folder / "concise-pairs-as-sft.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for row in concise_pair_rows():
            for answer in (row["chosen"], row["rejected"]):
                messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": answer}]
                handle.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


def step_times(run_dir: Path) -> list[float]:
    """Seconds per optimizer step from the elapsed times in metrics.jsonl (the first, warm-up step dropped)."""
    from backend.metrics import read_records

    elapsed = [r["elapsed_s"] for r in read_records(run_dir / "metrics.jsonl") if "loss" in r]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def timed_arm(stage: str, model: str, dataset: str, steps: int, batch: int) -> float:
    from backend import workspace
    from backend import stages

    run_dir = workspace.runs_dir() / f"bench-{stage}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stages.train(job_config(model, stage, dataset, steps, batch), run_dir, job_id=run_dir.name)
    return median(step_times(run_dir))


def memory_arm(model: str, steps: int, batch: int, second_copy: bool) -> dict:
    """One DPO run in this (fresh) process; returns peak RSS growth in MiB. Called via `--memory-arm`."""
    import resource

    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from backend import data, models, workspace
    from backend.stages import common

    config = job_config(model, "dpo", "concise-pairs", steps, batch)
    tokenizer = models.load_tokenizer(model)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.load_for_stage("concise-pairs", "dpo").rows]
    baseline = _rss_mib()
    run_dir = workspace.runs_dir() / f"bench-memory-{int(second_copy)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    precision = common.precision_flags(config)
    model_obj, *_ = common.load_peft_model(config, run_dir, precision["dtype"])
    reference = models.load_model(model, dtype=torch.float32) if second_copy else None
    args = DPOConfig(**common.training_args(config, run_dir, precision, False), beta=config.alignment.beta,
                     save_strategy="no")
    trainer = DPOTrainer(model=model_obj, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    if reference is None:
        common.choose_reference(model_obj, config)
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)
    return {"peak_growth_mib": peak - baseline, "weights_mib": _weights_mib(trainer.model, trainer.ref_model),
            "ref_model": trainer.ref_model is not None}


def _weights_mib(*modules) -> float:
    """Bytes of every distinct parameter / buffer storage the modules hold: the exact cost of model copies."""
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for tensor in list(module.parameters()) + list(module.buffers()):
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total / 2**20


def _rss_mib() -> float:
    """Current resident memory (Linux /proc; elsewhere the peak so far, which is close before the model loads)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_memory_arm(model: str, steps: int, batch: int, second_copy: bool) -> dict:
    command = [sys.executable, "-m", "bench.alignment", "--memory-arm", "copy" if second_copy else "disabled",
               "--model", model, "--steps", str(steps), "--batch", str(batch)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ),
                            cwd=Path(__file__).resolve().parent.parent)
    return json.loads(output.stdout.strip().splitlines()[-1])


def base_weights_mib(model: str) -> float:
    from backend import models
    path = Path(models.resolve(model).path)
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20


def main(steps: int = 12, rounds: int = 2, model: str = "smollm2-135m-instruct", batch: int = 4) -> str:
    sft_times, dpo_times = [], []
    with scratch_workspace() as home:
        if model == "smollm2-135m-instruct":
            from backend import models
            models.ensure_bundled_model()
        sft_data = sft_rows_file(home)
        for _ in range(rounds):  # alternate the arms so drift in machine speed hits both
            sft_times.append(timed_arm("sft", model, sft_data, steps, 2 * batch))
            dpo_times.append(timed_arm("dpo", model, "concise-pairs", steps, batch))
        memory_steps = min(steps, 3)  # peak RSS drifts with batch lengths and allocator state over longer runs
        disabled = run_memory_arm(model, memory_steps, batch, second_copy=False)
        copied = run_memory_arm(model, memory_steps, batch, second_copy=True)
        weights = base_weights_mib(model)
    ratio = median(dpo_times) / median(sft_times)
    saved = copied["peak_growth_mib"] - disabled["peak_growth_mib"]
    table = markdown_table(
        ["measure", "value", "target / note"],
        [[f"SFT step, s (median; {2 * batch} sequences)", median(sft_times), ", ".join(f"{v:.3f}" for v in sft_times)],
         [f"DPO step, s (median; {batch} pairs)", median(dpo_times), ", ".join(f"{v:.3f}" for v in dpo_times)],
         ["ratio DPO / SFT", ratio, "target <= 1.6"],
         ["weights held, DPO, reference = adapter disabled (MiB)", disabled["weights_mib"],
          "the studio's DPO: one base + adapter"],
         ["weights held, DPO, reference = second base copy (MiB)", copied["weights_mib"], "TRL with ref_model"],
         ["peak RSS growth, DPO, reference = adapter disabled (MiB)", disabled["peak_growth_mib"],
          f"{memory_steps} steps, own process"],
         ["peak RSS growth, DPO, reference = second base copy (MiB)", copied["peak_growth_mib"],
          f"{memory_steps} steps, own process"],
         ["memory saved by the adapter-disabled reference (MiB, peak RSS)", saved,
          f"base weights on disk: {weights:.1f} MiB; target: no second copy"]])
    text = (f"### Alignment cost ({model}, LoRA r=16, concise-pairs, {steps} steps, batch {batch} pairs)\n\n"
            f"{machine_line()}\n\n{table}\n")
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--memory-arm", choices=("disabled", "copy"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_arm:
        print(json.dumps(memory_arm(args.model, args.steps, args.batch, second_copy=args.memory_arm == "copy")))
    else:
        main(args.steps, args.rounds, args.model, args.batch)
