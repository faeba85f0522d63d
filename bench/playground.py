"""Playground and export cost: generation speed of the base / adapter / merged columns, and the one-click
export against the bare `merge_and_unload()` + `save_pretrained()` a user would script.

    python -m bench.playground [--quick] [--model smollm2-135m-instruct]

1. A short LoRA job (all-linear, r=16) trains on the identity demo (the adapter's values do not matter here).
2. Generation: the same prompt, greedy, exactly N new tokens, through each column of one playground session,
   columns rotated each round; tokens/s = N / wall time. Targets: merged / base >= 0.98, adapter / base >= 0.8.
3. Export: each arm in a fresh subprocess, alternating: wall time and peak RSS above the process baseline (after
   imports, before loading). Target: studio / bare <= 1.2 time, no extra full copy of the weights in memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_line, markdown_table, median, scratch_workspace

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def train_job(model: str, steps: int) -> str:
    from backend import jobs
    from backend.jobs import runner
    from backend.config import JobConfig

    config = JobConfig.from_dict({
        "model": model, "dataset": "identity-demo", "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": steps, "batch_size": 2, "max_length": 256, "eval_fraction": 0.0,
                     "save_steps": steps + 1, "learning_rate": 3e-4}})
    job = jobs.create(config, status="running")
    done = runner.run_job(job.id)
    if done.status != "completed":
        raise RuntimeError(f"benchmark job failed: {done.reason}")
    return job.id


def generation_speeds(job_id: str, new_tokens: int, rounds: int) -> dict[str, list[float]]:
    import torch

    from backend.serve import playground

    session = playground.open_session(job_id, verify=False)
    ids = session.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
    speeds: dict[str, list[float]] = {c.key: [] for c in session.columns}
    keys = [c.key for c in session.columns]
    for round_ in range(rounds + 1):                       # round 0 warms up and is not counted
        order = keys[round_ % len(keys):] + keys[:round_ % len(keys)]
        for key in order:
            column = session.column(key)
            model = column.model
            context = model.disable_adapter() if not column.use_adapter else _Null()
            with context, torch.no_grad():
                started = time.perf_counter()
                model.generate(**ids.to(model.device), do_sample=False, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, pad_token_id=session.tokenizer.pad_token_id)
                seconds = time.perf_counter() - started
            if round_:
                speeds[key].append(new_tokens / seconds)
    playground.close_session()
    return speeds


def export_arm(arm: str, job_id: str) -> dict:
    """Runs in a fresh process (see main): one export, its wall time and peak memory above the baseline."""
    import torch  # noqa: F401 - imported before the baseline, like everything the arms share

    import peft  # noqa: F401
    import transformers  # noqa: F401

    from backend import export, models, workspace
    from backend.models import adapters

    baseline = _vm_kib("VmRSS")
    started = time.perf_counter()
    phases = {}
    if arm == "studio":
        result = export.export_job(job_id, "merged", "float32",
                                   progress=lambda f, text: phases.setdefault(text.split(" (")[0].split(" ")[0]
                                                                              if text.startswith("zipping")
                                                                              else text.split(" (")[0],
                                                                              time.perf_counter() - started))
        size = sum(p.stat().st_size for p in result.folder.glob("*.safetensors"))
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        source = adapters.adapter_source(job_id)
        base = AutoModelForCausalLM.from_pretrained(models.resolve(source.config.model).path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(source.path)).merge_and_unload()
        out = workspace.exports_dir() / "bare"
        merged.save_pretrained(out, safe_serialization=True)
        size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {"seconds": time.perf_counter() - started, "peak_mib": (_vm_kib("VmHWM") - baseline) / 1024,
            "weights_mib": size / 2 ** 20, "phases": phases}


def run_export_arm(arm: str, job_id: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    out = subprocess.run([sys.executable, "-m", "bench.playground", "--arm", arm, "--job", job_id],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise RuntimeError(f"export arm {arm} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(quick: bool = False, model: str = "smollm2-135m-instruct", steps: int | None = None,
         new_tokens: int | None = None, rounds: int | None = None) -> str:
    steps = steps or (4 if quick else 10)
    new_tokens = new_tokens or (32 if quick else 64)
    rounds = rounds or (1 if quick else 3)
    with scratch_workspace():
        if model == "smollm2-135m-instruct":
            from backend import models
            models.ensure_bundled_model()
        job_id = train_job(model, steps)
        speeds = generation_speeds(job_id, new_tokens, rounds)
        studio, bare = [], []
        for _ in range(1 if quick else 2):                 # alternate the arms
            studio.append(run_export_arm("studio", job_id))
            bare.append(run_export_arm("bare", job_id))
    base = median(speeds["base"])
    generation = markdown_table(
        ["column", "tokens/s (median)", "ratio to base", "target", "all runs"],
        [["base (adapter disabled)", base, 1.0, "", _runs(speeds["base"])],
         ["adapter (unmerged)", median(speeds["adapter"]), median(speeds["adapter"]) / base, ">= 0.8",
          _runs(speeds["adapter"])],
         ["merged", median(speeds["merged"]), median(speeds["merged"]) / base, ">= 0.98", _runs(speeds["merged"])]])
    s_time, b_time = median([r["seconds"] for r in studio]), median([r["seconds"] for r in bare])
    s_peak, b_peak = median([r["peak_mib"] for r in studio]), median([r["peak_mib"] for r in bare])
    weights = studio[0]["weights_mib"]
    exports = markdown_table(
        ["arm", "seconds (median)", "peak RSS above baseline, MiB", "peak / weights", "runs"],
        [["LoRA Studio export (load, verify, merge, save, zip)", s_time, s_peak, s_peak / weights, len(studio)],
         ["bare merge_and_unload + save_pretrained", b_time, b_peak, b_peak / weights, len(bare)],
         ["ratio studio / bare", s_time / b_time, s_peak / b_peak, "", "target time <= 1.2"]])
    phases = ", ".join(f"{name} at {seconds:.1f} s" for name, seconds in studio[-1]["phases"].items())
    extra = _verify_and_zip_seconds(studio[-1]["phases"], studio[-1]["seconds"])
    text = (f"### Playground and export ({model}, LoRA r=16 all-linear, float32, {new_tokens} new tokens, "
            f"{rounds} rounds)\n\n{machine_line()}\n\n{generation}\n\n{exports}\n\n"
            f"Weights: {weights:.0f} MiB. Studio export phases (last run): {phases}. Of the last run's "
            f"{studio[-1]['seconds']:.1f} s, the merge verification took {extra[0]:.1f} s and the zip {extra[1]:.1f} s; "
            f"the rest (load, merge, save, card) took {studio[-1]['seconds'] - sum(extra):.1f} s, "
            f"{(studio[-1]['seconds'] - sum(extra)) / b_time:.2f}x the bare arm's median.\n")
    print(text)
    return text


def _verify_and_zip_seconds(phases: dict, total: float) -> tuple[float, float]:
    """Seconds spent verifying (both probes) and zipping, from the progress timestamps of one export."""
    at = phases.get
    try:
        verify = (at("merging the adapter into the weights") - at("verifying: adapter answers")
                  + at("saving safetensors") - at("verifying: merged answers"))
        return verify, total - at("zipping")
    except TypeError:   # a phase missing (a changed progress text): report nothing rather than a wrong split
        return 0.0, 0.0


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--arm", choices=["studio", "bare"], help=argparse.SUPPRESS)   # internal: one export arm
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(export_arm(args.arm, args.job)))
    else:
        main(args.quick, args.model)
