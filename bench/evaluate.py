"""Quality report cost: batched vs one-at-a-time generation on 100 held-out rows, and the whole task section.

    python -m bench.evaluate [--quick] [--model smollm2-135m-instruct]

1. A quickstart job (the bundled preset: LoRA r=16 all-linear, 40 steps, lr 3e-4) on the identity demo made
   large enough to hold out 100 rows: the demo drawn with three seeds (the same questions, other answers and
   order) plus the concise-pairs facts as chats, eval_fraction set so the stage's split holds `rows` rows.
2. Generation: the held-out rows' prompts through `backend.evaluate.generate.generate_ids` (greedy, the report's
   default max_new_tokens 64), base and adapter, at batch 1 (one at a time) and the batched sizes; wall time,
   rows/s, generated tokens/s, speed-up over batch 1 and how many answers equal batch 1's. Target: batch 8
   >= 3x faster than one at a time.
3. The whole task section (`backend.evaluate.task.run`: generation + teacher-forced scoring of both variants,
   every metric) at the report's default batch 8, and the scoring pass alone.
"""
from __future__ import annotations

import argparse
import json
import time

from bench.common import machine_line, markdown_table, scratch_workspace


def write_dataset(folder) -> tuple[str, int]:
    """The enlarged identity demo as JSONL; returns (path, rows)."""
    from backend.data.demo import concise_pair_rows, identity_rows

    rows = [row for seed in (0, 1, 2) for row in identity_rows(seed)]
    rows += [{"messages": [{"role": "user", "content": pair["prompt"]},
                           {"role": "assistant", "content": pair["chosen"]}]} for pair in concise_pair_rows(0)]
    path = folder / "identity-bench.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path), len(rows)


def train_job(model: str, dataset: str, total: int, rows: int, steps: int) -> str:
    from backend import jobs
    from backend.config import JobConfig
    from backend.jobs import presets, runner

    data = presets.load("quickstart").to_dict()
    data.update(model=model, dataset=dataset)
    # the stage's split holds round(total * eval_fraction) rows; the trainer's own eval reads 8 of them
    data["training"].update(eval_fraction=round(rows / total, 6), max_steps=steps, save_steps=steps + 1,
                            eval_max_rows=8)
    job = jobs.create(JobConfig.from_dict(data), status="running")
    done = runner.run_job(job.id)
    if done.status != "completed":
        raise RuntimeError(f"benchmark job failed: {done.reason}")
    return job.id


def generation_arms(ctx, rows, batch_sizes, variants) -> list[dict]:
    from backend.evaluate.generate import generate_ids

    prompts = [row.messages for row in rows]
    generate_ids(ctx, ctx.variant("adapter"), prompts[:2], batch_size=2)          # warm-up, not counted
    out = []
    for key in variants:
        variant = ctx.variant(key)
        first = None
        for size in batch_sizes:
            started = time.perf_counter()
            ids = generate_ids(ctx, variant, prompts, batch_size=size)
            seconds = time.perf_counter() - started
            first = first or (ids, seconds)
            out.append({"variant": key, "batch": size, "seconds": seconds, "rows": len(ids),
                        "tokens": sum(len(answer) for answer in ids),
                        "speedup": first[1] / seconds, "same": sum(a == b for a, b in zip(ids, first[0]))})
            print(f"   {key} batch {size}: {seconds:.1f} s", flush=True)
    return out


def main(quick: bool = False, model: str = "smollm2-135m-instruct", rows: int | None = None,
         max_new_tokens: int = 64, batch_sizes: tuple = (1, 8, 16), steps: int | None = None,
         variants: tuple = ("base", "adapter"), report_benchmarks: str = "studio_arith",
         report_rows: int = 50) -> str:
    from pathlib import Path

    from backend.evaluate import heldout, task
    from backend.evaluate.report import EvalOptions, run_report
    from backend.evaluate.context import load_context
    from backend.evaluate.generate import score
    from backend.serve.chat import GenerationSettings

    rows = rows or (30 if quick else 100)
    steps = steps or (10 if quick else 40)
    with scratch_workspace() as home:
        if model == "smollm2-135m-instruct":
            from backend import models
            models.ensure_bundled_model()
        dataset, total = write_dataset(Path(home))
        started = time.perf_counter()
        job_id = train_job(model, dataset, total, rows, steps)
        trained = time.perf_counter() - started
        ctx = load_context(job_id, settings=GenerationSettings(max_new_tokens=max_new_tokens), max_rows=rows,
                           batch_size=8)
        held = heldout.load(ctx)
        arms = generation_arms(ctx, held.rows, batch_sizes, variants)
        started = time.perf_counter()
        section = task.run(ctx)
        section_s = time.perf_counter() - started
        references = [r for r in held.rows if r.reference]
        started = time.perf_counter()
        for variant in ctx.variants:
            score(ctx, variant, [r.messages for r in references], [r.reference for r in references])
        scoring_s = time.perf_counter() - started
        report = run_report(job_id, EvalOptions(benchmarks=report_benchmarks, max_new_tokens=max_new_tokens,
                                                max_rows=report_rows))
    generation = markdown_table(
        ["variant", "batch", "seconds", "rows/s", "generated tokens/s", "speed-up vs batch 1",
         "answers equal to batch 1's"],
        [[a["variant"], a["batch"], a["seconds"], a["rows"] / a["seconds"], a["tokens"] / a["seconds"],
          a["speedup"], f"{a['same']}/{a['rows']}"] for a in arms])
    values = {m.name: m.values for m in section.metrics}
    section_table = markdown_table(
        ["what (batch 8, base + adapter)", "seconds", "rows/s (both variants)"],
        [["task section (generate + score + metrics)", section_s, 2 * len(held.rows) / section_s],
         ["teacher-forced scoring alone (measured after it)", scoring_s, 2 * len(references) / scoring_s]])
    figures = ", ".join(f"{name} base {values[name]['base']:.3g} → adapter {values[name]['adapter']:.3g}"
                        for name in ("token_f1", "exact_match", "loss") if name in values)
    eight = [a for a in arms if a["batch"] == 8]
    target = ", ".join(f"{a['variant']} {a['speedup']:.1f}x" for a in eight)
    text = (f"### Quality report generation ({model}, quickstart LoRA {steps} steps, {len(held.rows)} held-out rows "
            f"of {held.held_out}, greedy, max_new_tokens {max_new_tokens})\n\n{machine_line()}\n\n{generation}\n\n"
            f"Target: batch 8 >= 3x faster than one at a time: {target or 'not measured'}.\n\n{section_table}\n\n"
            f"Training the job took {trained:.0f} s (not counted). Its task figures: {figures}.\n")
    text += "\n" + whole_report(report)
    print(text)
    return text


def whole_report(report: dict) -> str:
    """The whole report with the Evaluate tab's defaults (+ the shipped lm-eval task): time per section and the
    figures a user reads first."""
    rows = []
    for name, section in report["sections"].items():
        shown = []
        for metric in section.get("metrics", []):
            values = metric.get("values", {})
            if isinstance(values.get("base"), (int, float)) and isinstance(values.get("adapter"), (int, float)):
                shown.append(f"{metric['name']} {values['base']:.3g} → {values['adapter']:.3g}")
            elif isinstance(values.get("adapter"), (int, float)):
                shown.append(f"{metric['name']} {values['adapter']:.3g}")
        rows.append([name, section.get("seconds", 0.0), "; ".join(shown[:6]) or "; ".join(section.get("notes", []))])
    table = markdown_table(["section (base → adapter)", "seconds", "figures"], rows)
    return (f"Whole report (the Evaluate tab's defaults + the shipped lm-eval task `studio_arith`, max_rows "
            f"{report['options'].get('max_rows')}): {report['seconds']:.0f} s.\n\n{table}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    main(args.quick, args.model)
