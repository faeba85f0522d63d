"""How much of a batch is padding, and what do the batching options buy? (training.batching)

    python -m bench.padding [--demo 20] [--synthetic 20] [--rounds 2] [--batch 4] [--max-length 512] [--model smollm2-135m-instruct]

Data: a realistic variable-length chat mix, no downloads: identity-demo rows plus seeded synthetic
multi-turn rows whose lengths follow a long tail (log-normal words per turn, 1-4 exchanges), cut to max_length.
Measures, for pad (TRL's dynamic padding to the longest row of each batch), group_by_length (transformers'
`train_sampling_strategy="group_by_length"`) and padding_free (TRL `padding_free=True`: the batch's rows end to
end, position ids restart at each row):
  * padding efficiency = real tokens / all tokens in the batches, simulated with the trainers' own samplers over
    a bigger sample of the same mix (--efficiency-rows), batch --batch;
  * effective tokens/s = real (non-padding) tokens / train_runtime of one epoch over the same rows through the
    studio's SFT stage (`sft.run`, LoRA r=16, no eval), arms alternated over --rounds, medians and ratios to pad;
  * correctness of padding-free on this machine: the logits of a packed pair vs each row alone (max |diff|).
Target: the best *correct* option becomes `training.batching: auto` for the device (backend.config.resolve_batching).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from pathlib import Path

from bench.common import machine_line, markdown_table, median, scratch_workspace

MODES = ("pad", "group_by_length", "padding_free")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
_WORDS = ("the model answers questions about data formats tokens training adapters rank alpha learning rate batch "
          "epoch loss curve chat template assistant user system prompt completion preference memory kernel "
          "attention layer gradient optimizer schedule warmup checkpoint").split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Multi-turn chats with long-tail lengths: most are short, a few are very long (log-normal word counts)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "You are a helpful assistant."}] if i % 4 == 0 else []
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            question = " ".join(rng.choices(_WORDS, k=max(3, int(rng.lognormvariate(2.3, 0.6)))))
            answer = " ".join(rng.choices(_WORDS, k=max(3, int(rng.lognormvariate(3.3, 1.0)))))
            messages += [{"role": "user", "content": f"{question} ({i})?"}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def chat_mix(synthetic: int, seed: int = 0, demo: int | None = None) -> list[dict]:
    """identity-demo rows (the first `demo` of them; None = all) + `synthetic` long-tail rows, shuffled."""
    from backend.data.demo import identity_rows
    demo_rows = identity_rows(seed)
    random.Random(seed).shuffle(demo_rows)
    rows = demo_rows[:demo] + synthetic_rows(synthetic, seed)
    random.Random(seed).shuffle(rows)
    return rows


def token_lengths(rows: list[dict], tokenizer, max_length: int) -> list[int]:
    """Tokens per row as the SFT stage trains them (rows whose answer is cut away are skipped, as there)."""
    from backend.data.render import tokenize_conversation
    out = []
    for row in rows:
        tokens = tokenize_conversation(tokenizer, row["messages"], max_length)
        if 1 in tokens["assistant_masks"]:
            out.append(len(tokens["input_ids"]))
    return out


def padding_efficiency(lengths: list[int], batch: int, mode: str, seed: int = 42) -> float:
    """Real tokens / all tokens over one epoch of batches in the order the trainer's sampler gives."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    if mode == "padding_free":
        return 1.0  # one row per batch, nothing padded (TRL's collator pads only to pad_to_multiple_of, off)
    generator = torch.Generator().manual_seed(seed)
    if mode == "group_by_length":
        order = list(LengthGroupedSampler(batch, lengths=lengths, generator=generator))
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    real = total = 0
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start:start + batch]]
        real, total = real + sum(chunk), total + len(chunk) * max(chunk)
    return real / total


def packed_logits_diff(model: str) -> float:
    """Max |logits(packed pair) - logits(each row alone)| with the collator and attention the stage uses."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from backend import models
    net = models.load_model(model, dtype=torch.float32).eval()
    net.config.use_cache = False  # as in training: a cache turns off transformers' packed-sequence masks
    generator = torch.Generator().manual_seed(0)
    high = min(net.config.vocab_size, 30000)
    a, b = (torch.randint(10, high, (n,), generator=generator) for n in (37, 21))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": a.tolist()},
                                                                               {"input_ids": b.tolist()}])
    with torch.no_grad():
        packed = net(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = torch.cat([net(input_ids=a[None]).logits[0], net(input_ids=b[None]).logits[0]])
    return (packed - alone).abs().max().item()


def timed_arm(mode: str, model: str, data: Path, batch: int, max_length: int) -> tuple[float, int]:
    """(effective tokens/s, real tokens) of one epoch through sft.run with training.batching = mode."""
    from backend import workspace
    from backend.config import JobConfig
    from backend import stages

    config = JobConfig.from_dict({
        "model": model, "dataset": str(data), "method": "lora", "lora": LORA,
        "training": {"max_steps": 0, "epochs": 1, "batch_size": batch, "max_length": max_length,
                     "eval_fraction": 0.0, "save_steps": 100_000, "logging_steps": 1000, "seed": 42,
                     "batching": mode}})
    run_dir = workspace.runs_dir() / f"padding-{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stages.train(config, run_dir, job_id=run_dir.name)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    return last["num_input_tokens_seen"] / last["train_runtime"], int(last["num_input_tokens_seen"])


def main(synthetic: int = 20, rounds: int = 2, batch: int = 4, max_length: int = 512,
         model: str = "smollm2-135m-instruct", efficiency_rows: int = 2000, demo: int = 20) -> str:
    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
    tokens: dict[str, int] = {}
    with scratch_workspace() as home:
        from backend import models
        if model == "smollm2-135m-instruct":
            models.ensure_bundled_model()
        tokenizer = models.load_tokenizer(model)
        rows = chat_mix(synthetic, demo=demo)
        data = home / "padding-mix.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        trained = token_lengths(rows, tokenizer, max_length)
        sample = token_lengths(chat_mix(efficiency_rows, seed=1), tokenizer, max_length)
        efficiency = {mode: padding_efficiency(sample, batch, mode) for mode in MODES}
        diff = packed_logits_diff(model)
        for round_ in range(rounds):  # alternate (and rotate) the arms so drift in machine speed hits all
            for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:
                speed, seen = timed_arm(mode, model, data, batch, max_length)
                speeds[mode].append(speed)
                tokens[mode] = seen
    base = median(speeds["pad"])
    table = markdown_table(
        ["batching", "padding efficiency", "effective tokens/s (median)", "ratio to pad", "all runs", "real tokens"],
        [[mode, f"{efficiency[mode]:.1%}", median(speeds[mode]), median(speeds[mode]) / base,
          ", ".join(f"{v:.1f}" for v in speeds[mode]), tokens.get(mode, "")] for mode in MODES])
    p50, p90 = _quantile(sample, 0.5), _quantile(sample, 0.9)
    correct = "yes" if diff < 1e-3 else "NO"
    text = (f"### Padding and batching ({model}, LoRA r=16, batch {batch}, max_length {max_length})\n\n"
            f"{machine_line()}\n\n"
            f"Chat mix: {demo} identity-demo rows + {synthetic} long-tail synthetic rows ({len(trained)} trained rows, "
            f"{sum(trained)} tokens, one epoch per arm, {rounds} rounds). Efficiency sample: {len(sample)} rows, "
            f"tokens p50 {p50}, p90 {p90}, max {max(sample)}.\n\n{table}\n\n"
            f"Padding-free keeps rows apart on this machine: {correct} (packed pair vs each row alone, max |logit "
            f"diff| {diff:.1e}, sdpa). Default `training.batching: auto` -> "
            f"{_auto_line()}.\n")
    print(text)
    return text


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


def _auto_line() -> str:
    from backend.config import PADDING_FREE_CPU_TOKENS, resolve_batching
    return (f"{resolve_batching('auto', False, PADDING_FREE_CPU_TOKENS)} on CPU up to {PADDING_FREE_CPU_TOKENS} "
            f"tokens per batch (batch x max_length), {resolve_batching('auto', False, PADDING_FREE_CPU_TOKENS + 1)} "
            f"above; {resolve_batching('auto', True)} on CUDA (padding_free with flash-attn installed)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=int, default=20, help="identity-demo rows in the timed mix")
    parser.add_argument("--synthetic", type=int, default=20, help="long-tail synthetic rows in the timed mix")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--efficiency-rows", type=int, default=2000)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    main(args.synthetic, args.rounds, args.batch, args.max_length, args.model, args.efficiency_rows, args.demo)
