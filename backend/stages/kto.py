"""KTO: answers labelled good or bad (e.g. thumbs-up / thumbs-down logs), no pairs needed.

Each answer is pushed up (desirable) or down (undesirable) relative to a frozen reference, against a KL
estimate built from mismatched prompt / answer pairs within each batch (so a step needs at least 2 rows, and
TRL keeps the batches in a fixed order: the rows are shuffled here, once, with the job's seed).
alignment.desirable_weight / undesirable_weight balance the two kinds: KTO expects
desirable rows x desirable_weight : undesirable rows x undesirable_weight between 1 and 4/3; outside that a
warning says which weight to set. The reference is the same as DPO's (common.choose_reference).

Top to bottom: data (before anything heavy) -> tokenizer, rows whose prompt leaves no room for an answer
skipped -> label balance -> split -> model + adapter -> TRL KTOTrainer with the studio callbacks -> adapter +
card. Returns the results the job record keeps.
"""
from __future__ import annotations

import json
import logging
import random
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

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl")
# KTO paper: desirable x weight / (undesirable x weight) should lie in [1, 4/3]
BALANCE_RANGE = (1.0, 4 / 3)


def run(config: JobConfig, run_dir: Path, hooks: JobHooks | None = None, job_id: str = "") -> dict:
    started = time.monotonic()
    hooks = hooks or JobHooks()
    run_dir = Path(run_dir)

    if config.training.batch_size < 2:
        raise ValueError("training.batch_size: KTO needs at least 2 rows per step (its KL estimate pairs each "
                         "prompt with another row's answer); set batch_size to 2 or more")

    # 1. Data first: a wrong dataset (or a missing init_adapter) fails here, before the model loads.
    dataset = datasets_backend.load_for_stage(config.dataset, "kto")
    common.check_init_adapter(config)
    tokenizer = models.load_tokenizer(config.model, config.chat_template)
    examples, dropped = [], 0
    for row in dataset.rows:
        if not common.prompt_fits(tokenizer, row["prompt"], config.training.max_length, row.get("tools")):
            dropped += 1  # the prompt alone fills max_length: no answer token would be compared
            continue
        example = {"prompt": row["prompt"], "completion": row["completion"], "label": bool(row["label"])}
        if row.get("tools"):
            example["tools"] = json.dumps(row["tools"])  # TRL parses a JSON string; keeps the columns uniform
        examples.append(example)
    if dropped:
        log.warning("%d rows have prompts longer than max_length=%d and are skipped", dropped,
                    config.training.max_length)
    if not examples:
        raise datasets_backend.DataError(
            f"all {len(dataset.rows)} prompts of dataset '{dataset.id}' fill training.max_length="
            f"{config.training.max_length}; raise training.max_length")
    balance = label_balance(examples, config)
    train_rows, eval_rows = common.split_rows(common.uniform_tools(examples), config.training.eval_fraction,
                                              config.training.seed)
    random.Random(config.training.seed).shuffle(train_rows)  # mixed labels in every (fixed-order) batch
    log.info("dataset %s: %d rows (%d desirable, %d undesirable), %d train, %d eval", dataset.id,
             len(dataset.rows), balance["desirable"], balance["undesirable"], len(train_rows), len(eval_rows))

    # 2. Model with its adapter (the SFT job's when chained).
    precision = common.precision_flags(config)
    model, model_info, pissa_init_dir = common.load_peft_model(config, run_dir, precision["dtype"])
    common.allow_reference_copy(model)
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
    from trl import KTOConfig, KTOTrainer

    trainer = KTOTrainer(args=KTOConfig(desirable_weight=config.alignment.desirable_weight,
                                        undesirable_weight=config.alignment.undesirable_weight, **args),
                         **trainer_kwargs)
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
        "label_balance": balance,
        "trainable_parameters": trainable,
        "wall_time_s": round(time.monotonic() - started, 2),
        "adapter_dir": str(adapter_dir),
    }
    rows = {"rows": len(dataset.rows), "train_rows": len(train_rows), "eval_rows": len(eval_rows),
            "dropped_rows": dropped}
    write_card(run_dir / "card.md", job_id=job_id or run_dir.name, config=config, model_info=model_info,
               dataset=dataset, rows=rows, results=results)
    return results


def label_balance(rows: list[dict], config: JobConfig) -> dict:
    """Counts of each label and the weighted ratio KTO cares about; warns (with the fix) when it is off."""
    desirable = sum(1 for row in rows if row["label"])
    undesirable = len(rows) - desirable
    weights = config.alignment
    if not desirable or not undesirable:
        missing = "undesirable (thumbs-down)" if desirable else "desirable (thumbs-up)"
        log.warning("KTO: the dataset has no %s rows, so it only learns in one direction; add some, or use SFT "
                    "for good examples only", missing)
        return {"desirable": desirable, "undesirable": undesirable, "weighted_ratio": None}
    if not weights.undesirable_weight:
        return {"desirable": desirable, "undesirable": undesirable, "weighted_ratio": None}
    ratio = (desirable * weights.desirable_weight) / (undesirable * weights.undesirable_weight)
    low, high = BALANCE_RANGE
    if not low <= ratio <= high:
        # the desirable weight that brings the ratio into range with the undesirable weight as set
        lower = undesirable * weights.undesirable_weight * low / desirable
        upper = undesirable * weights.undesirable_weight * high / desirable
        log.warning("KTO: %d desirable vs %d undesirable rows give a weighted ratio of %.2f, outside the %.2f to "
                    "%.2f KTO expects; set alignment.desirable_weight between %.2f and %.2f", desirable,
                    undesirable, ratio, low, high, lower, upper)
    return {"desirable": desirable, "undesirable": undesirable, "weighted_ratio": round(ratio, 3)}
