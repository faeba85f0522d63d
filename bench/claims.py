"""Claims: what the seeds and papers say about each method, measured side by side on one checkable task.

    python -m bench claims [--quick]        # or: python -m bench.claims [--steps 40] [--arms lora dora ...]

Every arm trains the studio's SFT stage (`backend.stages.train`, in a FRESH subprocess for a clean peak memory)
on the demo dataset `dates-demo` ("Write 2024-03-05 in words." -> "5 March 2024", backend/data/demo_dates.py)
with the same seed, rows, steps, batch and learning rate; only the method (and the rank where a claim is about
rank) differs. The "@own-lr" arms repeat an arm at its method's own published learning rate (OWN_LR): at the
shared 3e-4, VeRA, IA3, LoHa, LoKr and AdaLoRA barely move in 30 steps. Per arm: trainable parameters, the steps
to reach a target train loss (LoRA's loss at 60% of its steps; losses smoothed over 5 steps), the final eval loss
on the harness's own held-out split, exact-match accuracy of greedy answers on 40 held-out dates that no training
row has (through the adapter, the playground's loading code), the median step time and the peak memory (VmHWM
minus the RSS after the imports) relative to LoRA r=8, and AdaLoRA's final ranks per layer (run.json's
adapter_ranks). A claims table then says, from these numbers, whether each claim held here. "qlora + loftq" is the
studio's own LoftQ (backend/models/loftq.py: peft's loftq_init needs CUDA), scored like QLoRA: on its 4-bit base.
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

ALPHA = 16          # one alpha for every arm: r=8 LoRA has scale 2; at r=128 plain LoRA scales by 1/8, rsLoRA by 1.41
# label -> (method, lora settings beyond r=8 / alpha 16, other config sections[, learning rate]); an arm without
# its own learning rate trains at the shared one (--lr)
ARMS = {
    "lora": ("lora", {}, {}),
    "dora": ("dora", {}, {}),
    "pissa": ("pissa", {}, {}),
    "lora+": ("lora", {"loraplus_ratio": 16}, {}),
    "lora r=128": ("lora", {"r": 128}, {}),
    "rslora r=128": ("lora", {"r": 128, "rslora": True}, {}),
    "vera": ("vera", {"r": 256}, {}),
    "qlora": ("qlora", {}, {}),
    "adalora": ("adalora", {}, {"adalora": {"init_r": 12, "target_r": 8, "interval": 5}}),
    "olora": ("olora", {}, {}),
    "eva": ("eva", {}, {}),
    "corda": ("corda", {}, {}),
    "ia3": ("ia3", {}, {}),
    "loha": ("loha", {}, {}),
    "lokr": ("lokr", {}, {}),
    "oft": ("oft", {}, {}),
    "qlora + loftq": ("loftq", {}, {}),
}
# Each method's usual rate, from its paper or peft's own method comparison; these methods train a few vectors or
# factors whose updates start tiny, and their papers tune them one to two orders above LoRA's rate.
OWN_LR = {
    "vera": 1e-2,       # VeRA paper (Kopiczko et al., ICLR 2024) tunes its scaling vectors at 4e-3 to 1e-2
    "ia3": 3e-3,        # T-Few paper (Liu et al. 2022): IA3 at 3e-3; peft's MetaMathQA comparison uses 5e-3
    "loha": 3e-3,       # LyCORIS (Yeh et al., ICLR 2024) trains LoHa / LoKr at ~1e-3 to 4e-3
    "lokr": 3e-3,       # as LoHa; peft's MetaMathQA comparison runs LoKr at 3e-3 (lokr/...-factor4-lr0.003)
    "adalora": 1e-3,    # AdaLoRA paper (Zhang et al., ICLR 2023): 5e-4 to 1e-3 on GLUE / SQuAD
}
ARMS.update({f"{label} @own-lr": (*ARMS[label], OWN_LR[label]) for label in OWN_LR})
QUICK_ARMS = ("lora", "dora", "pissa", "lora+", "lora r=128", "rslora r=128", "vera", "qlora", "adalora")
SMOOTH = 5          # steps in the moving average of the train loss
TARGET_AT = 0.6     # the target loss: LoRA's smoothed loss at this share of its steps


def job_config(model: str, arm: str, steps: int, batch: int, lr: float, seed: int = 42):
    """The arm's job; `lr` is the shared rate, replaced by the arm's own where ARMS gives one."""
    from backend.config import JobConfig
    method, lora, extra, *own_lr = ARMS[arm]
    lr = own_lr[0] if own_lr else lr
    config, problems = JobConfig.parse({
        "model": model, "dataset": "dates-demo", "method": method,
        "lora": {"r": 8, "alpha": ALPHA, "dropout": 0.0, "target_modules": "all-linear", **lora},
        "training": {"max_steps": steps, "batch_size": batch, "max_length": 128, "learning_rate": lr,
                     "eval_fraction": 0.1, "save_steps": steps + 1, "logging_steps": 1, "seed": seed,
                     "warmup_ratio": 0.05},
        **extra})
    if problems:
        raise ValueError(f"{arm}: " + "; ".join(problems))
    return config


def arm(model: str, label: str, steps: int, batch: int, lr: float, base_accuracy: bool = False) -> dict:
    """One arm in this (fresh) process: train, then answer the held-out dates greedily. Called via `--arm`."""
    import bitsandbytes  # noqa: F401 - imported before the baseline, as bench/estimator.py does
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from backend import stages, workspace
    from backend.metrics import read_records
    from bench.estimator import _status_kib

    config = job_config(model, label, steps, batch, lr)
    baseline = _status_kib("VmRSS")
    run_dir = workspace.runs_dir() / f"claims-{label.replace(' ', '').replace('=', '').replace('+', 'plus')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = stages.train(config, run_dir, job_id=run_dir.name)
    train_s = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    records = [r for r in read_records(run_dir / "metrics.jsonl") if "loss" in r]
    elapsed = [r["elapsed_s"] for r in records]
    facts = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    accuracy, base, samples = _accuracy(config, run_dir, base_accuracy)
    return {"arm": label, "method": config.method, "r": config.lora.r, "lr": config.training.learning_rate,
            "trainable": results["trainable_parameters"],
            "losses": [r["loss"] for r in records], "eval_loss": results.get("final_eval_loss"),
            "step_s": median([b - a for a, b in zip(elapsed, elapsed[1:])]), "train_s": train_s,
            "peak_mib": (peak - baseline) / 1024, "accuracy": accuracy, "base_accuracy": base,
            "samples": samples, "ranks": facts.get("adapter_ranks") or {}}


def _accuracy(config, run_dir: Path, base_too: bool) -> tuple[float, float | None, list[str]]:
    """Exact-match share of the held-out dates, greedy, through the adapter (and the base with it disabled)."""
    import torch

    from backend.data.demo_dates import exact, heldout_pairs
    from backend.models.adapters import AdapterSource, load_tokenizer, load_with_adapters

    source = AdapterSource(run_dir.name, run_dir / "adapter", "final adapter", config, "completed")
    model, tokenizer = load_with_adapters([source]), load_tokenizer(source)
    pairs = heldout_pairs()

    def answers() -> list[str]:
        out, side = [], tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for start in range(0, len(pairs), 20):
                texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                       add_generation_prompt=True) for q, _ in pairs[start:start + 20]]
                batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():
                    ids = model.generate(**batch, max_new_tokens=12, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
                out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tokenizer.padding_side = side
        return [a.strip() for a in out]

    said = answers()
    accuracy = sum(exact(a, ref) for a, (_, ref) in zip(said, pairs)) / len(pairs)
    base = None
    if base_too:
        with model.disable_adapter():
            base_said = answers()
        base = sum(exact(a, ref) for a, (_, ref) in zip(base_said, pairs)) / len(pairs)
        said = said[:2] + [f"base: {a}" for a in base_said[:2]]
    return accuracy, base, said[:4]


def measure(model: str, label: str, steps: int, batch: int, lr: float, base_accuracy: bool = False) -> dict:
    """`arm` in a fresh subprocess; a failed arm comes back as {"arm", "error"} (its last line of stderr)."""
    command = [sys.executable, "-m", "bench.claims", "--arm", label, "--model", model, "--steps", str(steps),
               "--batch", str(batch), "--lr", repr(lr)] + (["--base"] if base_accuracy else [])
    output = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ),
                            cwd=Path(__file__).resolve().parent.parent)
    if output.returncode != 0:
        lines = [line for line in output.stderr.strip().splitlines() if line.strip()]
        return {"arm": label, "error": (lines[-1] if lines else f"exit {output.returncode}")[:160]}
    return json.loads(output.stdout.strip().splitlines()[-1])


def smoothed(losses: list[float], window: int = SMOOTH) -> list[float]:
    return [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
            for i in range(len(losses))]


def steps_to(losses: list[float], target: float) -> int | None:
    """The first step (1-based) whose smoothed train loss is at or below target; None when never."""
    return next((i + 1 for i, loss in enumerate(smoothed(losses)) if loss <= target), None)


def verdicts(runs: dict[str, dict], target: float) -> list[list[str]]:
    """(claim, measure, what was measured, held?) rows, decided from the numbers only."""
    def ok(label):
        return label in runs and "error" not in runs[label]

    def get(label, key):
        return runs[label][key] if ok(label) else None

    def speed(label):
        return steps_to(runs[label]["losses"], target) if ok(label) else None

    def steps_text(label):
        if not ok(label):
            return "not run" if label not in runs else "failed"
        n = speed(label)
        return f"{n}" if n else "not reached"

    def pct(value):
        return "-" if value is None else f"{100 * value:.0f} %"

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    def ran(method):             # the method's arms that ran: at the shared rate, at its own
        return [label for label in (method, f"{method} @own-lr") if ok(label)]

    def at_lr(label):            # " at 3e-4" (runs made before the lr was recorded: "")
        lr = runs[label].get("lr")
        return "" if lr is None else " at " + f"{lr:.0e}".replace("e-0", "e-")

    def exact_per_lr(labels):
        return ", ".join(f"{pct(get(label, 'accuracy'))}{at_lr(label)}" for label in labels) or "-"

    rows = []
    lora_steps = speed("lora")

    def faster(label, factor):   # held: reached the target in at most lora_steps / factor steps
        n = speed(label)
        if not (ok(label) and lora_steps):
            return "not measured"
        if n is None:
            return "no (target not reached)"
        ratio = lora_steps / n
        return f"{'yes' if ratio >= factor else 'partly' if ratio > 1.05 else 'no'} ({ratio:.2f}x)"

    def better(a, b):            # a beats b: lower eval loss and accuracy not lower
        if not (ok(a) and ok(b)):
            return "not measured"
        lower = get(a, "eval_loss") < get(b, "eval_loss")
        more = get(a, "accuracy") > get(b, "accuracy")     # a tie in accuracy is no win: "partly" at best
        return "yes" if lower and more else "partly" if lower or more else "no"

    rows.append(["PiSSA converges 2-3x faster than LoRA", "steps to target loss; final eval loss",
                 f"steps {steps_text('pissa')} vs {steps_text('lora')}; eval {fmt(get('pissa', 'eval_loss'))} vs "
                 f"{fmt(get('lora', 'eval_loss'))}", faster("pissa", 2.0)])
    rows.append(["DoRA beats LoRA at the same rank", "eval loss and exact match at r=8",
                 f"eval {fmt(get('dora', 'eval_loss'))} vs {fmt(get('lora', 'eval_loss'))}; exact "
                 f"{pct(get('dora', 'accuracy'))} vs {pct(get('lora', 'accuracy'))}", better("dora", "lora")])
    rows.append(["LoRA+ converges ~2x faster", "steps to target loss",
                 f"steps {steps_text('lora+')} vs {steps_text('lora')}", faster("lora+", 1.8)])
    rows.append(["rsLoRA makes high rank pay off", "r=128 LoRA vs rsLoRA eval loss (same alpha)",
                 f"eval {fmt(get('rslora r=128', 'eval_loss'))} vs {fmt(get('lora r=128', 'eval_loss'))} "
                 f"(r=8 LoRA {fmt(get('lora', 'eval_loss'))}); exact {pct(get('rslora r=128', 'accuracy'))} vs "
                 f"{pct(get('lora r=128', 'accuracy'))}", better("rslora r=128", "lora r=128")])
    veras = ran("vera")
    vera_params = get(veras[0], "trainable") if veras else None
    if veras and ok("lora"):
        fewer = get("lora", "trainable") / vera_params
        vera = (f"{'yes' if fewer >= 10 else 'no'} ({fewer:.0f}x fewer); quality " + ", ".join(
            f"{'kept' if get(label, 'accuracy') >= get('lora', 'accuracy') - 0.1 else 'lost'}{at_lr(label)}"
            for label in veras))
    else:
        vera = "not measured"
    rows.append(["VeRA ~10x fewer trainable parameters", "parameters, eval loss, accuracy",
                 f"{vera_params or '-'} vs {get('lora', 'trainable') or '-'} params; eval "
                 f"{' / '.join(fmt(get(label, 'eval_loss')) for label in veras) or '-'} vs "
                 f"{fmt(get('lora', 'eval_loss'))}; exact {exact_per_lr(veras)} vs {pct(get('lora', 'accuracy'))}",
                 vera])
    if ok("qlora") and ok("lora"):
        gap = 100 * (get("lora", "accuracy") - get("qlora", "accuracy"))
        qlora = f"{'yes' if gap <= 2 else 'no'} ({gap:+.0f} points)"
        if ok("qlora + loftq"):
            loftq_gap = 100 * (get("lora", "accuracy") - get("qlora + loftq", "accuracy"))
            narrower = loftq_gap < gap or (loftq_gap == gap and (get("qlora + loftq", "eval_loss") or 0)
                                           < (get("qlora", "eval_loss") or 0))
            qlora += (f"; LoftQ {'narrows' if narrower else 'does not narrow'} it ({loftq_gap:+.0f} points)")
        else:
            qlora += "; LoftQ not measured"
    else:
        qlora = "not measured"
    rows.append(["QLoRA within 1-2 points of LoRA; LoftQ narrows the gap",
                 "accuracy and eval loss: LoRA vs QLoRA vs QLoRA+LoftQ",
                 f"exact {pct(get('lora', 'accuracy'))} / {pct(get('qlora', 'accuracy'))} / "
                 f"{pct(get('qlora + loftq', 'accuracy'))}; eval {fmt(get('lora', 'eval_loss'))} / "
                 f"{fmt(get('qlora', 'eval_loss'))} / {fmt(get('qlora + loftq', 'eval_loss'))}", qlora])
    adaloras = ran("adalora")
    ranks = (get(adaloras[0], "ranks") or {}) if adaloras else {}      # the shared-rate arm's when both ran
    totals = [sum(modules.values()) for modules in ranks.values()]
    spread = f"per-layer totals {min(totals)}-{max(totals)}" if totals else "no ranks recorded"
    if adaloras and ok("lora") and not totals:
        ada = "not measured (no ranks recorded: too few steps for AdaLoRA to prune)"
    elif adaloras and ok("lora"):
        uneven = max(totals) > min(totals)
        ada = (f"{'yes' if uneven else 'no'} (ranks {'uneven' if uneven else 'even'}); accuracy " + ", ".join(
            f"{'kept' if get(label, 'accuracy') >= get('lora', 'accuracy') else 'lower'}{at_lr(label)}"
            for label in adaloras))
    else:
        ada = "not measured"
    rows.append(["AdaLoRA spends rank where it matters", "final rank per layer, accuracy vs LoRA at equal budget",
                 f"{spread}; exact {exact_per_lr(adaloras)} vs {pct(get('lora', 'accuracy'))}", ada])
    return rows


def main(steps: int = 40, batch: int = 8, lr: float = 3e-4, model: str = "smollm2-135m-instruct",
         arms=tuple(ARMS)) -> str:
    arms = tuple(arms)
    if "lora" not in arms:
        arms = ("lora",) + arms
    started = time.perf_counter()
    runs: dict[str, dict] = {}
    with scratch_workspace():
        from backend import data
        data.ensure_demo_datasets(["dates-demo"])
        model = registered_model(model)
        for label in arms:
            print(f"   claims: {label}", file=sys.stderr, flush=True)
            runs[label] = measure(model, label, steps, batch, lr, base_accuracy=label == "lora")
    total_s = time.perf_counter() - started
    lora = runs["lora"]
    if "error" in lora:
        raise RuntimeError(f"the LoRA arm failed: {lora['error']}")
    target = smoothed(lora["losses"])[max(0, round(TARGET_AT * len(lora["losses"])) - 1)]
    rows = []
    for label in arms:
        run = runs[label]
        if "error" in run:
            rows.append([label, "", "failed: " + run["error"].replace("|", "/")] + [""] * 8)
            continue
        reached = steps_to(run["losses"], target)
        rows.append([label, f"{run['lr']:g}", f"{run['trainable']:,}", 
                     f"{run['trainable'] / lora['trainable']:.3g}",
                     reached or "not reached", f"{smoothed(run['losses'])[-1]:.3f}",
                     "-" if run["eval_loss"] is None else f"{run['eval_loss']:.3f}", f"{100 * run['accuracy']:.0f} %",
                     f"{run['step_s'] / lora['step_s']:.2f}", f"{run['peak_mib']:.0f}",
                     f"{run['peak_mib'] / lora['peak_mib']:.2f}"])
    table = markdown_table(["arm", "lr", "trainable", "params / lora", f"steps to loss {target:.3g}",
                            "final train loss", "eval loss", "exact match", "step time / lora", "peak MiB",
                            "peak / lora"], rows)
    claims = markdown_table(["claim", "measure", "measured here", "held?"], verdicts(runs, target))
    ada = next((runs[label] for label in ("adalora", "adalora @own-lr") if label in runs), {})
    by_layer = sorted((ada.get("ranks") or {}).items(), key=lambda item: [int(t) if t.isdigit() else t
                                                                           for t in item[0].split()])
    ranks = "\n".join(f"- {layer}: " + ", ".join(f"{m} {r}" for m, r in modules.items())
                      for layer, modules in by_layer)
    samples = "; ".join(f"`{s}`" for s in lora.get("samples", []))
    own_lr = " (@own-lr arms: their method's own, OWN_LR)" if any(len(ARMS[label]) > 3 for label in arms) else ""
    text = "\n".join([
        f"### Claims on dates-demo ({model}, {steps} steps, batch {batch}, lr {lr:g}{own_lr}, alpha {ALPHA}, seed 42; "
        f"{len(arms)} arms in {total_s / 60:.1f} min)", "", machine_line(), "",
        f"Base model exact match on the 40 held-out dates: {100 * (lora.get('base_accuracy') or 0):.0f} %. "
        f"Target train loss = LoRA r=8's at {TARGET_AT:.0%} of its steps ({target:.3g}), losses smoothed over "
        f"{SMOOTH} steps; about 3 s a step here. LoRA's first answers: {samples}.", "",
        table, "", claims, "",
        f"AdaLoRA's final ranks per layer ({ada.get('arm')}, init_r 12, target_r 8):" if ranks
        else "AdaLoRA: no ranks recorded.",
        "", ranks, "",
        "One seed, one task, a 135M model on CPU: a claim that does not hold here may hold at scale; "
        "step time and memory are single runs on a shared machine."])
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--base", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.model, args.arm, args.steps, args.batch, args.lr, args.base)))
    else:
        main(args.steps, args.batch, args.lr, args.model, args.arms)
