"""Serving many jobs' adapters on one base: mixed-adapter batches against the base, one-at-a-time and a merged
model; the cost of an adapter swap; the API's answer against the playground's.

    python -m bench serve [--quick]          (or python -m bench.serve [--quick] [--model NAME_OR_FOLDER])

One process, one workspace (bench.common.scratch_workspace), one engine (backend/serve/engine.py, max_adapters =
max_batch = 8) behind the OpenAI-compatible API on uvicorn in a thread, driven by the real `openai` client:

1. Adapters: ONE real job trains a few steps (backend.jobs.runner.run_job, LoRA all-linear). The other seven are
   real peft LoRA folders with the trained one's LoraConfig and `init_lora_weights=False` (random non-zero A and
   B, B scaled down so that answers stay text), each under its own seed, registered as completed jobs of the same
   config: eight adapters with eight different sets of weights.
2. Adapter swap: on the warm engine (base answered, one adapter already loaded so the base is wrapped by peft),
   the same greedy request to a not-yet-loaded adapter, then again once it is loaded; added ms = first - second
   (median over a few adapters), beside the engine's own load_ms.
3. Throughput arms, the same 8 prompts (greedy, N new tokens at most) in every arm, arms rotated each round,
   medians: 8 concurrent requests to 8 different adapters; 8 to the base; the 8 adapter requests one at a time;
   8 to one adapter (the trained one, unmerged, in a batch) and the same 8 to a copy of that job merged with
   peft's merge_and_unload, served by a second engine on the merged folder. Concurrent requests are queued
   while the scheduler's thread is held on a one-token request (a gate around the scheduler's model_for, the
   bench's only hook), then released, so that they start as ONE batch (batch sizes from engine.stats()); wall
   time runs from that release (the one-token request included) to the last answer; tokens/s = completion
   tokens (usage) / wall time. One at a time: each request sent when the previous one answered.
4. Answers: the trained job's answers from /v1/chat/completions (alone, and in the arms' batches) against
   backend.serve.chat.answer on the same job loaded as the playground loads it (greedy, same N).
"""
from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import machine_line, markdown_table, median, scratch_workspace

PROMPTS = [
    "Tell me a long story about a lighthouse keeper.",
    "Explain how a bicycle works to a ten year old.",
    "Write a short poem about the sea at night.",
    "What are the main differences between a cat and a dog as pets?",
    "Describe a busy market in a small town on a Saturday morning.",
    "Give me five tips for learning to cook.",
    "Why is the sky blue? Explain it simply.",
    "Write a letter to a friend about a trip to the mountains.",
]
RANDOM_B_SCALE = 0.05      # random lora_B scaled so the adapters move the model without turning it into noise
BASE_ARM = "8 requests to the base, batched"
MIXED_ARM = "8 requests to 8 different adapters, batched"
SERIAL_ARM = "the same 8 adapter requests, one at a time"
ONE_ARM = "8 requests to one adapter (unmerged), batched"
MERGED_ARM = "the same 8 to a merged copy of it, batched"


def train_job(model: str, steps: int, lr: float) -> str:
    from backend import jobs
    from backend.config import JobConfig
    from backend.jobs import runner

    config = JobConfig.from_dict({
        "model": model, "dataset": "identity-demo", "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": steps, "batch_size": 2, "max_length": 256, "eval_fraction": 0.0,
                     "save_steps": steps + 1, "learning_rate": lr}})
    job = jobs.create(config, status="running")
    done = runner.run_job(job.id)
    if done.status != "completed":
        raise RuntimeError(f"benchmark job failed: {done.reason}")
    return job.id


def random_adapter_jobs(trained: str, count: int) -> list[str]:
    """`count` completed jobs with the trained job's config, each holding a real peft LoRA folder of random
    non-zero weights (init_lora_weights=False, its own seed), saved with the trained adapter's tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model

    from backend import jobs, models
    from backend.models import adapters

    source = adapters.adapter_source(trained)
    tokenizer = adapters.load_tokenizer(source)
    base = models.load_model(source.config.model, dtype=torch.float32)
    made = []
    for seed in range(1, count + 1):
        config = LoraConfig.from_pretrained(str(source.path))
        config.init_lora_weights = False
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(RANDOM_B_SCALE)
        job = jobs.create(source.config, status="completed")
        folder = job.run_dir / "adapter"
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        base = model.unload()       # the bare base again, for the next one
        made.append(job.id)
    return made


def merged_folder(job_id: str, folder: Path) -> Path:
    """The job merged into its base with peft's merge_and_unload (backend.models.adapters.load_merged), saved as
    a model folder with the adapter's tokenizer."""
    from backend.models import adapters

    source = adapters.adapter_source(job_id)
    _, merge = adapters.load_merged(source, "float32")
    merged = merge()
    merged.save_pretrained(str(folder), safe_serialization=True)
    adapters.load_tokenizer(source).save_pretrained(str(folder))
    del merged
    return folder


class Served:
    """One engine behind its API and an `openai` client for it."""

    def __init__(self, model: str, max_adapters: int = 8, max_batch: int = 8):
        import openai

        from backend.serve.engine import Engine
        from backend.serve.openai_api import build_api, serve_in_thread

        self.engine = Engine(model, max_adapters=max_adapters, max_batch=max_batch)
        self.gate, self.held = threading.Event(), threading.Event()
        self.gate.set()
        self._model_for = self.engine.scheduler.model_for
        self.engine.scheduler.model_for = self._gated
        self.server, self.thread, port = serve_in_thread(build_api(self.engine, None))
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                                    timeout=600)

    def chat(self, model: str, prompt: str, new_tokens: int) -> tuple[str, int]:
        result = self.client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     temperature=0, max_tokens=new_tokens)
        return result.choices[0].message.content, result.usage.completion_tokens

    def sizes(self) -> Counter:
        return Counter({int(k): v for k, v in self.engine.stats()["batches"]["sizes"].items()})

    def _gated(self, rows):
        """The scheduler's model_for, held while the gate is closed (the bench's only hook into the engine)."""
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait()
        return self._model_for(rows)

    def together(self, asked: list[str], prompts: list[str], new_tokens: int) -> dict:
        """The requests sent concurrently while the scheduler's thread is held on a one-token request, then
        released: they start as ONE batch, as requests that arrive during a running batch do."""
        engine = self.engine
        self.gate.clear()
        self.held.clear()
        holder = threading.Thread(target=engine.complete, args=(engine.prepare(
            engine.model_name, prompt="Once upon a time", temperature=0, max_tokens=1),))
        holder.start()
        try:
            if not self.held.wait(60):
                raise RuntimeError("the scheduler did not take the holding request within 60 s")
            before = self.sizes()
            with ThreadPoolExecutor(len(asked)) as pool:
                futures = [pool.submit(self.chat, model, prompt, new_tokens)
                           for model, prompt in zip(asked, prompts)]
                try:
                    deadline = time.monotonic() + 120
                    while len(engine.scheduler.waiting) < len(asked):
                        failed = [f.exception() for f in futures if f.done() and f.exception()]
                        if failed:
                            raise failed[0]
                        if time.monotonic() > deadline:
                            raise RuntimeError("the concurrent requests were not all queued within 120 s")
                        time.sleep(0.005)
                finally:
                    started = time.perf_counter()
                    self.gate.set()                    # the one-token request runs, then the queued batch
                answers = [future.result() for future in futures]
            seconds = time.perf_counter() - started
        finally:
            self.gate.set()
            holder.join(60)
        sizes = self.sizes() - before - Counter({1: 1})    # less the holding request's own batch
        return _arm(answers, seconds, sizes)

    def one_at_a_time(self, asked: list[str], prompts: list[str], new_tokens: int) -> dict:
        before = self.sizes()
        started = time.perf_counter()
        answers = [self.chat(model, prompt, new_tokens) for model, prompt in zip(asked, prompts)]
        return _arm(answers, time.perf_counter() - started, self.sizes() - before)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.close()


def _arm(answers: list[tuple[str, int]], seconds: float, sizes: Counter) -> dict:
    tokens = sum(count for _, count in answers)
    return {"texts": [text for text, _ in answers], "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "sizes": dict(sorted(sizes.items()))}


def playground_answers(job_id: str, prompts: list[str], new_tokens: int) -> list[str]:
    """The playground's adapter column (greedy) on the job, loaded apart from the server's engine."""
    from backend.models import adapters
    from backend.serve.chat import GenerationSettings, answer

    source = adapters.adapter_source(job_id)
    model = adapters.load_with_adapters([source])
    tokenizer = adapters.load_tokenizer(source)
    settings = GenerationSettings(max_new_tokens=new_tokens)
    texts = [answer(model, tokenizer, [{"role": "user", "content": p}], settings=settings) for p in prompts]
    del model
    return texts


def swap_costs(served: Served, names: list[str], prompt: str, new_tokens: int) -> list[dict]:
    """The same request to each adapter twice: not loaded yet, then loaded."""
    out = []
    for name in names:
        started = time.perf_counter()
        served.chat(name, prompt, new_tokens)
        first = time.perf_counter() - started
        started = time.perf_counter()
        served.chat(name, prompt, new_tokens)
        again = time.perf_counter() - started
        load_ms = next(a["load_ms"] for a in served.engine.stats()["adapters"] if a["name"] == name)
        out.append({"name": name, "first_ms": first * 1000, "loaded_ms": again * 1000, "load_ms": load_ms})
    return out


def measure(model: str, steps: int, lr: float, new_tokens: int, rounds: int, swaps: int) -> dict:
    from backend import models, workspace

    prompts = PROMPTS
    timings = {}
    started = time.perf_counter()
    trained = train_job(model, steps, lr)
    timings["train"] = time.perf_counter() - started
    started = time.perf_counter()
    randoms = random_adapter_jobs(trained, len(prompts) - 1)
    timings["random adapters"] = time.perf_counter() - started
    adapter_ids = [trained, *randoms]
    base_name = models.resolve(model).name
    expected = playground_answers(trained, prompts, new_tokens)
    started = time.perf_counter()
    merged_dir = merged_folder(trained, workspace.home() / "bench-merged-model")
    timings["merge + save"] = time.perf_counter() - started

    main = Served(base_name, max_adapters=len(adapter_ids), max_batch=len(prompts))
    merged = Served(str(merged_dir), max_adapters=1, max_batch=len(prompts))
    try:
        main.chat(base_name, prompts[0], new_tokens)                     # warm the base
        wrap = swap_costs(main, [randoms[-1]], prompts[0], new_tokens)   # the first adapter wraps the base
        swaps_seen = swap_costs(main, randoms[:swaps], prompts[0], new_tokens)
        merged.chat(merged.engine.model_name, prompts[0], new_tokens)    # warm the merged engine
        alone = [main.chat(trained, prompt, new_tokens)[0] for prompt in prompts]   # loads the trained one too

        arms = {
            MIXED_ARM: lambda: main.together(adapter_ids, prompts, new_tokens),
            BASE_ARM: lambda: main.together([base_name] * len(prompts), prompts, new_tokens),
            SERIAL_ARM: lambda: main.one_at_a_time(adapter_ids, prompts, new_tokens),
            ONE_ARM: lambda: main.together([trained] * len(prompts), prompts, new_tokens),
            MERGED_ARM: lambda: merged.together([merged.engine.model_name] * len(prompts), prompts, new_tokens),
        }
        results = {name: [] for name in arms}
        names = list(arms)
        for round_ in range(rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                results[name].append(arms[name]())
        stats = main.engine.stats()
    finally:
        main.close()
        merged.close()
    return {"results": results, "expected": expected, "alone": alone, "wrap": wrap, "swaps": swaps_seen,
            "timings": timings, "loaded": stats["adapters"], "trained": trained, "adapters": adapter_ids}


def markdown(data: dict, model: str, new_tokens: int, rounds: int) -> str:
    results = data["results"]

    def tps(name):
        return median([r["tokens_per_s"] for r in results[name]])

    def wall(name):
        return median([r["seconds"] for r in results[name]])

    rows = []
    for name, runs in results.items():
        sizes = "; ".join(", ".join(f"{count} of {size}" for size, count in r["sizes"].items()) for r in runs)
        rows.append([name, tps(name), wall(name), runs[-1]["tokens"], sizes,
                     ", ".join(f"{r['tokens_per_s']:.1f}" for r in runs)])
    arms = markdown_table(["arm (8 requests, the same 8 prompts)", "tokens/s (median)", "wall s (median)",
                           "completion tokens", "batches per run (count of size, engine.stats)",
                           "tokens/s, all runs"], rows)

    expected, trained = data["expected"], data["trained"]
    position = data["adapters"].index(trained)
    in_mixed = [r["texts"][position] for r in results[MIXED_ARM]]
    checks = [("alone", data["alone"], expected),
              ("in the batch of 8 to one adapter", [t for r in results[ONE_ARM] for t in r["texts"]],
               expected * len(results[ONE_ARM])),
              ("its row of the mixed batch of 8 adapters", in_mixed, [expected[position]] * len(in_mixed))]
    matched = {label: sum(a == b for a, b in zip(got, want)) for label, got, want in checks}
    totals = {label: len(got) for label, got, _ in checks}
    all_matched = all(matched[label] == totals[label] for label in matched)
    merged_same = sum(a == b for r in results[MERGED_ARM] for a, b in zip(r["texts"], expected))
    merged_total = sum(len(r["texts"]) for r in results[MERGED_ARM])

    mixed_vs_base = tps(MIXED_ARM) / tps(BASE_ARM)
    batched_vs_serial = tps(MIXED_ARM) / tps(SERIAL_ARM)
    unmerged_vs_merged = tps(ONE_ARM) / tps(MERGED_ARM)
    added = median([s["first_ms"] - s["loaded_ms"] for s in data["swaps"]])
    load_ms = median([s["load_ms"] for s in data["swaps"]])
    wrap = data["wrap"][0]
    summary = markdown_table(["measure", "target", "measured", "verdict"], [
        ["8 requests to 8 different adapters vs 8 to the base, batched: tokens/s ratio", ">= 0.8x",
         f"{mixed_vs_base:.2f}x ({tps(MIXED_ARM):.1f} vs {tps(BASE_ARM):.1f} tok/s)",
         "met" if mixed_vs_base >= 0.8 else "MISSED"],
        ["the same 8 adapter requests: batched vs one at a time, tokens/s ratio", "batched faster",
         f"{batched_vs_serial:.2f}x ({tps(MIXED_ARM):.1f} vs {tps(SERIAL_ARM):.1f} tok/s; wall "
         f"{wall(MIXED_ARM):.1f} vs {wall(SERIAL_ARM):.1f} s)", "met" if batched_vs_serial > 1 else "MISSED"],
        ["8 requests to one adapter: unmerged in a batch vs its merged copy, tokens/s ratio (break-even)",
         "report", f"{unmerged_vs_merged:.2f}x ({tps(ONE_ARM):.1f} vs {tps(MERGED_ARM):.1f} tok/s)",
         "merged faster" if unmerged_vs_merged < 1 else "unmerged as fast or faster"],
        ["adapter swap: first request to a not-yet-loaded adapter vs the same request once loaded", "report",
         f"+{added:.0f} ms (engine load_ms {load_ms:.0f}; median of {len(data['swaps'])}); the first adapter ever "
         f"(wraps the base): +{wrap['first_ms'] - wrap['loaded_ms']:.0f} ms", "measured"],
        ["/v1/chat/completions vs the playground's adapter column (greedy, same job, 8 prompts)", "identical text",
         "; ".join(f"{label}: {matched[label]}/{totals[label]}" for label in matched),
         "met" if all_matched else "MISSED"],
    ])
    swaps = ", ".join(f"{s['first_ms']:.0f} -> {s['loaded_ms']:.0f} ms (load {s['load_ms']:.0f})"
                      for s in data["swaps"])
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in data["timings"].items())
    verdict = ("all targets met" if mixed_vs_base >= 0.8 and batched_vs_serial > 1 and all_matched
               else "TARGET MISSED: " + ", ".join(
                   label for label, ok in (("mixed/base >= 0.8x", mixed_vs_base >= 0.8),
                                           ("batched faster", batched_vs_serial > 1),
                                           ("identical answers", all_matched)) if not ok))
    text = (f"### Serving adapters ({model}, greedy, {new_tokens} new tokens at most, {rounds} round(s), arms "
            f"rotated; engine max_adapters=8, max_batch=8; the real openai client over HTTP)\n\n{machine_line()}\n\n"
            f"{summary}\n\n**Verdict: {verdict}.**\n\n{arms}\n\n"
            f"Adapters: job {trained} trained for real (LoRA r=16 all-linear, identity-demo); the other "
            f"{len(data['adapters']) - 1} are real peft LoRA folders with its config and `init_lora_weights=False` "
            f"(random non-zero weights, lora_B x {RANDOM_B_SCALE}, seeds 1..{len(data['adapters']) - 1}), "
            "registered as completed jobs; not trained, not copies. Concurrent arms: the 8 requests queued while "
            "the scheduler is held on a one-token request, then released, so they start as one batch; wall time from "
            "that release to the last answer. Merged copy: the trained job through peft's merge_and_unload (served by "
            f"a second engine); its answers equal the adapter's in {merged_same}/{merged_total}. Swaps (first -> loaded): {swaps}. "
            f"Setup: {timings}.\n")
    return text


def main(quick: bool = False, model: str = "smollm2-135m-instruct", steps: int | None = None,
         new_tokens: int | None = None, rounds: int | None = None, lr: float | None = None) -> str:
    tiny = model != "smollm2-135m-instruct"
    steps = steps or (6 if tiny else 4 if quick else 8)
    lr = lr or (1e-1 if tiny else 1e-3)     # the tiny random model needs a push before its answers are text
    new_tokens = new_tokens or (8 if tiny else 32 if quick else 48)
    rounds = rounds or (1 if quick or tiny else 2)
    swaps = 1 if quick or tiny else 3
    with scratch_workspace():
        from backend import models
        if tiny:   # registered by name, as a user's model is: jobs that name a folder re-import it on each request
            spec = models.import_model(Path(model), name=Path(model).name).name
        else:
            spec = models.ensure_bundled_model().name
        data = measure(spec, steps, lr, new_tokens, rounds, swaps)
    text = markdown(data, Path(model).name if tiny else model, new_tokens, rounds)
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    main(args.quick, args.model)
