"""What does each method cost? LoRA, QLoRA, DoRA and PiSSA on the same rows and steps: tokens/s, peak memory and
the weights held, as ratios to LoRA.

    python -m bench.methods [--length 512] [--batch 2] [--steps 6] [--rounds 2] [--methods lora qlora dora pissa]
                            [--measurements FILE.jsonl]   # reuse the estimator benchmark's runs

Each run is the studio's SFT stage in a fresh subprocess (bench/estimator.py's `measure`: rows that fill
max_length, LoRA r=16 all-linear, default batching); the methods are alternated over --rounds. tokens/s =
batch x length / median step time (first step left out); peak = VmHWM minus the RSS after the imports; weights held
= exact bytes of the model's frozen parameters and buffers (tied weights once). Anchors: DoRA about 1.26x
LoRA's step time; QLoRA about half of LoRA's weight memory or less (4-bit linear layers, embeddings kept).
"""
from __future__ import annotations

import argparse

from bench.common import machine_line, markdown_table, median, scratch_workspace
from bench.estimator import METHODS, measure, prepare


def main(length: int = 512, batch: int = 2, steps: int = 6, rounds: int = 2, model: str = "smollm2-135m-instruct",
         methods=METHODS, measurements: str | None = None) -> str:
    """`measurements`: the estimator benchmark's saved arm results (JSONL) for `length` instead of new runs."""
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    if measurements:
        import json
        from pathlib import Path
        for line in Path(measurements).read_text().splitlines():
            run = json.loads(line) if line.strip() else {}
            if run.get("method") in runs and run.get("max_length") == length:
                runs[run["method"]].append(run)
                batch, rounds = run["batch"], len(runs[run["method"]])
        methods = tuple(m for m in methods if runs[m])
    else:
        with scratch_workspace() as home:
            model, files = prepare(home, model, (length,), batch, steps)
            for round_ in range(rounds):  # rotate the order so drift in machine speed hits every method
                shift = round_ % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    runs[method].append(measure(model, files[length], method, length, batch, steps))
    anchor = "lora" if "lora" in runs else methods[0]

    def stat(method: str, key: str) -> float:
        return median([r[key] for r in runs[method]])

    rows = []
    for method in methods:
        speed = batch * length / stat(method, "step_s")
        rows.append([method, speed, stat(method, "step_s") / stat(anchor, "step_s"),
                     stat(method, "measured_mib"), stat(method, "measured_mib") / stat(anchor, "measured_mib"),
                     stat(method, "base_weights_mib"), stat(method, "base_weights_mib") / stat(anchor, "base_weights_mib"),
                     stat(method, "adapter_mib"), ", ".join(f"{batch * length / r['step_s']:.0f}" for r in runs[method])])
    table = markdown_table(["method", "tokens/s", f"step time / {anchor}", "peak MiB", f"peak / {anchor}",
                            "weights held MiB", f"weights / {anchor}", "adapter MiB", "tokens/s, all runs"], rows)
    source = (f"the estimator's runs ({measurements.rsplit('/', 1)[-1]}), one per method, in sequence"
              if measurements else f"{steps} steps, {rounds} rounds alternated")
    text = (f"### Methods' cost ({model}, LoRA r=16 all-linear, batch {batch} x {length} tokens; {source})"
            f"\n\n{machine_line()}\n\n{table}\n\n"
            "Anchors: DoRA about 1.26x LoRA's step time; QLoRA about half the weight memory (or less).\n")
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--measurements", help="use the estimator benchmark's saved arm results (JSONL)")
    args = parser.parse_args()
    main(args.length, args.batch, args.steps, args.rounds, args.model, tuple(args.methods), args.measurements)
