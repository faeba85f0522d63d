"""Does LoRA Studio add training overhead? The same SFT run through the studio's stage and through a plain
TRL script written here, side by side, alternating rounds; medians of tokens/s and their ratio.

    python -m bench.overhead [--steps 20] [--rounds 2] [--model smollm2-135m-instruct]

Target: studio / plain >= 0.95. Both arms: same model, rows, LoRA settings, batch, max_length, seed; no eval,
no mid-run checkpoint; tokens/s = non-padding tokens seen / train_runtime.
"""
from __future__ import annotations

import argparse
import json

from bench.common import machine_line, markdown_table, median, scratch_workspace

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


def studio_arm(model: str, steps: int, batch: int) -> float:
    from backend import workspace
    from backend.config import JobConfig
    from backend import stages

    config = JobConfig.from_dict({
        "model": model, "dataset": "identity-demo", "method": "lora", "lora": LORA,
        "training": {"max_steps": steps, "batch_size": batch, "learning_rate": 3e-4, "max_length": 512,
                     "eval_fraction": 0.0, "save_steps": steps + 1, "seed": 42}})
    run_dir = workspace.runs_dir() / f"studio-{steps}"
    import shutil
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stages.train(config, run_dir, job_id=run_dir.name)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    return last["num_input_tokens_seen"] / last["train_runtime"]


def plain_trl_arm(model: str, steps: int, batch: int) -> float:
    """What a user would write by hand: load, LoraConfig, SFTTrainer on the messages rows."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from backend import models, workspace
    from backend.data.demo import identity_rows

    set_seed(42)
    path = models.resolve(model).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = SFTTrainer(
        model=base,
        args=SFTConfig(output_dir=str(workspace.runs_dir() / "plain"), max_steps=steps,
                       per_device_train_batch_size=batch, learning_rate=3e-4, max_length=512, report_to=[],
                       save_strategy="no", logging_steps=1, seed=42, bf16=False, use_cpu=not torch.cuda.is_available(),
                       gradient_checkpointing=False,  # TRL defaults it on; the studio arm has it off
                       include_num_input_tokens_seen="non_padding", disable_tqdm=True),
        train_dataset=Dataset.from_list(identity_rows()),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                               target_modules=LORA["target_modules"], task_type="CAUSAL_LM"),
    )
    output = trainer.train()
    return trainer.state.num_input_tokens_seen / output.metrics["train_runtime"]


def main(steps: int = 20, rounds: int = 2, model: str = "smollm2-135m-instruct", batch: int = 4) -> str:
    studio, plain = [], []
    with scratch_workspace():
        if model == "smollm2-135m-instruct":
            from backend import models
            models.ensure_bundled_model()
        for _ in range(rounds):  # alternate the arms so drift in machine speed hits both
            studio.append(studio_arm(model, steps, batch))
            plain.append(plain_trl_arm(model, steps, batch))
    ratio = median(studio) / median(plain)
    table = markdown_table(
        ["arm", "tokens/s (median)", "runs", "all runs"],
        [["LoRA Studio (sft stage)", median(studio), len(studio), ", ".join(f"{v:.1f}" for v in studio)],
         ["plain TRL script", median(plain), len(plain), ", ".join(f"{v:.1f}" for v in plain)],
         ["ratio studio / plain", ratio, "", "target >= 0.95"]])
    text = (f"### Training overhead ({model}, LoRA r=16, {steps} steps, batch {batch})\n\n"
            f"{machine_line()}\n\n{table}\n")
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    main(args.steps, args.rounds, args.model, args.batch)
