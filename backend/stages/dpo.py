"""DPO: preference pairs (prompt, chosen, rejected) against a frozen reference policy.

Top to bottom: data (before anything heavy) -> tokenizer, rows whose prompt leaves no room for an answer
skipped -> split -> model + adapter (new, or a finished SFT job's with init_adapter) -> TRL DPOTrainer with
the studio callbacks -> adapter + card. Returns the results the job record keeps.

The reference is never a second copy of the base: a new adapter's reference is the base with the adapter
disabled; a chained job's is base + a frozen copy of the SFT adapter (common.choose_reference).
alignment.loss_type: sigmoid (DPO), ipo, hinge run in DPOTrainer; simpo is reference-free and length-normalised,
which TRL implements in its CPO trainer (loss_type="simpo", cpo_alpha=0), so that one runs there.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from backend import data as datasets_backend
from backend import models
from backend.callbacks import (CheckpointMarkerCallback, HooksCallback, JobHooks, MetricsCallback,
                               NanGuardCallback, latest_complete_checkpoint, read_metrics)
from backend.card import write_card
from backend.config import JobConfig
from backend.stages import common

log = logging.getLogger("lorastudio")

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def run(config: JobConfig, run_dir: Path, hooks: JobHooks | None = None, job_id: str = "") -> dict:
    started = time.monotonic()
    hooks = hooks or JobHooks()
    run_dir = Path(run_dir)

    # 1. Data first: a wrong dataset (or a missing init_adapter) fails here, before the model loads.
    dataset = datasets_backend.load_for_stage(config.dataset, "dpo")
    common.check_init_adapter(config)
    tokenizer = models.load_tokenizer(config.model, config.chat_template)
    examples, dropped = [], 0
    for row in dataset.rows:
        if not common.prompt_fits(tokenizer, row["prompt"], config.training.max_length, row.get("tools")):
            dropped += 1  # the prompt alone fills max_length: no answer token would be compared
            continue
        example = {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
        if row.get("tools"):
            example["tools"] = json.dumps(row["tools"])  # TRL parses a JSON string; keeps the columns uniform
        examples.append(example)
    if dropped:
        log.warning("%d pairs have prompts longer than max_length=%d and are skipped", dropped,
                    config.training.max_length)
    if not examples:
        raise datasets_backend.DataError(
            f"all {len(dataset.rows)} prompts of dataset '{dataset.id}' fill training.max_length="
            f"{config.training.max_length}; raise training.max_length")
    train_rows, eval_rows = common.split_rows(common.uniform_tools(examples), config.training.eval_fraction,
                                              config.training.seed)
    log.info("dataset %s: %d pairs, %d train, %d eval", dataset.id, len(dataset.rows), len(train_rows),
             len(eval_rows))

    # 2. Model with its adapter (the SFT job's when chained).
    precision = common.precision_flags(config)
    model, model_info, pissa_init_dir = common.load_peft_model(config, run_dir, precision["dtype"])
    common.allow_reference_copy(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s (%s), method %s, loss %s: %d trainable parameters", model_info.name,
             model_info.architecture, config.method, config.alignment.loss_type, trainable)

    # 3. Trainer.
    from datasets import Dataset

    args = common.preference_args(config, run_dir, precision, bool(eval_rows))
    trainer_kwargs = dict(
        model=model,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        optimizers=(common.loraplus_optimizer(model, config), None),
        callbacks=[MetricsCallback(run_dir / "metrics.jsonl"), CheckpointMarkerCallback(),
                   NanGuardCallback(), HooksCallback(hooks)],
    )
    if config.alignment.loss_type == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        # SimPO = CPO's simpo loss without its NLL term; the reward margin gamma keeps TRL's default (0.5)
        trainer = CPOTrainer(args=CPOConfig(loss_type="simpo", cpo_alpha=0.0, **args), **trainer_kwargs)
        reference = "none (SimPO is reference-free)"
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(args=DPOConfig(loss_type=[config.alignment.loss_type], **args), **trainer_kwargs)
        reference = common.choose_reference(model, config)
    log.info("reference policy: %s", reference)

    # 4. Train (from the newest complete checkpoint when the job is resumed).
    resume = latest_complete_checkpoint(run_dir / "checkpoints")
    if resume:
        log.info("resuming from %s", resume.name)
    if hooks.on_model:
        hooks.on_model(model, "before_train")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if hooks.on_model:
        hooks.on_model(model, "after_train")
    if hooks.stop_reason:
        return {"stopped": hooks.stop_reason, "steps": trainer.state.global_step}
    if eval_rows and trainer.state.global_step % config.training.eval_steps != 0:
        trainer.evaluate()  # a final eval loss for the card

    # 5. Adapter, card, results.
    if not trainer.is_world_process_zero():  # under DDP only rank 0 writes the adapter and the card
        return {"steps": trainer.state.global_step}
    adapter_dir = common.save_adapter(model, tokenizer, run_dir, pissa_init_dir)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if isinstance(m.get("loss"), float)]
    eval_losses = [m["eval_loss"] for m in metrics if isinstance(m.get("eval_loss"), float)]
    results = {
        "steps": trainer.state.global_step,
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        **{"final_" + key.replace("/", "_"): value for key, value in common.last_values(metrics, REWARD_KEYS).items()},
        "reference": reference,
        "trainable_parameters": trainable,
        "wall_time_s": round(time.monotonic() - started, 2),
        "adapter_dir": str(adapter_dir),
    }
    rows = {"rows": len(dataset.rows), "train_rows": len(train_rows), "eval_rows": len(eval_rows),
            "dropped_rows": dropped}
    write_card(run_dir / "card.md", job_id=job_id or run_dir.name, config=config, model_info=model_info,
               dataset=dataset, rows=rows, results=results)
    return results
