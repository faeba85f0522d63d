"""ORPO: SFT and preference in one stage, no reference model.

The loss is the NLL of the chosen answer plus beta x the log odds ratio of chosen over rejected (alignment.beta
is that odds-ratio weight, 0.1 to 0.5). Because it also does the SFT part, ORPO can start from a base model;
init_adapter still chains it on a finished SFT job.

Top to bottom: data (before anything heavy) -> tokenizer, rows whose prompt leaves no room for an answer
skipped -> split -> model + adapter -> TRL ORPOTrainer (trl.experimental.orpo) with the studio callbacks ->
adapter + card. Returns the results the job record keeps.
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

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss",
               "log_odds_ratio")


def run(config: JobConfig, run_dir: Path, hooks: JobHooks | None = None, job_id: str = "") -> dict:
    started = time.monotonic()
    hooks = hooks or JobHooks()
    run_dir = Path(run_dir)

    # 1. Data first: a wrong dataset (or a missing init_adapter) fails here, before the model loads.
    dataset = datasets_backend.load_for_stage(config.dataset, "orpo")
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

    # 2. Model with its adapter (the SFT job's when chained). No reference: nothing else to load.
    precision = common.precision_flags(config)
    model, model_info, pissa_init_dir = common.load_peft_model(config, run_dir, precision["dtype"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s (%s), method %s: %d trainable parameters", model_info.name, model_info.architecture,
             config.method, trainable)

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
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    trainer = ORPOTrainer(args=ORPOConfig(**args), **trainer_kwargs)

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
        "trainable_parameters": trainable,
        "wall_time_s": round(time.monotonic() - started, 2),
        "adapter_dir": str(adapter_dir),
    }
    rows = {"rows": len(dataset.rows), "train_rows": len(train_rows), "eval_rows": len(eval_rows),
            "dropped_rows": dropped}
    write_card(run_dir / "card.md", job_id=job_id or run_dir.name, config=config, model_info=model_info,
               dataset=dataset, rows=rows, results=results)
    return results
