"""SFT: supervised fine-tuning on chat conversations, loss on assistant tokens only.

Top to bottom: data (before anything heavy) -> tokenizer + masks -> split -> model + adapter -> TRL
SFTTrainer with the studio callbacks -> adapter + card. Returns the results the job record keeps.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from backend import data as datasets_backend
from backend import models
from backend.callbacks import (CheckpointMarkerCallback, HooksCallback, JobHooks, MetricsCallback,
                               NanGuardCallback, latest_complete_checkpoint, read_metrics)
from backend.card import write_card
from backend.config import JobConfig, resolve_batching
from backend.data.render import tokenize_conversation
from backend.stages import common

log = logging.getLogger("lorastudio")


def run(config: JobConfig, run_dir: Path, hooks: JobHooks | None = None, job_id: str = "") -> dict:
    started = time.monotonic()
    hooks = hooks or JobHooks()
    run_dir = Path(run_dir)

    # 1. Data first: a wrong dataset fails here, before the model loads.
    dataset = datasets_backend.load_for_stage(config.dataset, "sft", eval_fraction=config.training.eval_fraction)
    tokenizer = models.load_tokenizer(config.model, config.chat_template)
    examples, dropped = [], 0
    for row in dataset.rows:
        tokens = tokenize_conversation(tokenizer, row["messages"], config.training.max_length, row.get("tools"))
        if 1 not in tokens["assistant_masks"]:
            dropped += 1  # truncation removed the whole answer: the row would train nothing
            continue
        examples.append({"input_ids": tokens["input_ids"], "assistant_masks": tokens["assistant_masks"]})
    if dropped:
        log.warning("%d rows lost their whole answer to max_length=%d and are skipped",
                    dropped, config.training.max_length)
    if not examples:
        raise datasets_backend.DataError(
            f"all {len(dataset.rows)} rows of dataset '{dataset.id}' lose their whole answer to "
            f"training.max_length={config.training.max_length}; raise training.max_length")
    train_rows, eval_rows = common.split_rows(examples, config.training.eval_fraction, config.training.seed)
    log.info("dataset %s: %d rows, %d train, %d eval", dataset.id, len(dataset.rows), len(train_rows), len(eval_rows))

    # 2. Model with its adapter.
    precision = common.precision_flags(config)
    model, model_info, pissa_init_dir = common.load_peft_model(config, run_dir, precision["dtype"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s (%s), method %s: %d trainable parameters, world size %s", model_info.name,
             model_info.architecture, config.method, trainable, os.environ.get("WORLD_SIZE", "1"))

    # 3. Batching (training.batching; see bench/padding.py) and the trainer.
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    settings = config.training
    batching = resolve_batching(settings.batching, not precision["use_cpu"], settings.batch_size * settings.max_length)
    padding_free = batching == "padding_free"
    if padding_free and not precision["use_cpu"]:
        _use_flash_attention(model, precision)
    log.info("batching: %s (training.batching=%s)", batching, settings.batching)
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=settings.max_steps if settings.max_steps > 0 else -1,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=float(settings.warmup_ratio),  # a float below 1 is a ratio of the total steps
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps,
        save_steps=settings.save_steps,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=settings.eval_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
        use_cpu=precision["use_cpu"],
        gradient_checkpointing=settings.gradient_checkpointing,
        # rows are already cut to max_length; TRL refuses a max_length together with padding-free
        max_length=None if padding_free else settings.max_length,
        padding_free=padding_free,  # one row of all the examples, position ids restart at each
        train_sampling_strategy="group_by_length" if batching == "group_by_length" else "random",
        report_to=[],
        save_total_limit=3,
        # padding-free batches hold no padding at all (and the pad token is often the real end-of-turn token)
        include_num_input_tokens_seen="all" if padding_free else "non_padding",
        logging_nan_inf_filter=False,  # a NaN loss must reach the NaN guard, not be filtered out
        disable_tqdm=False,
    )
    optimizer = common.loraplus_optimizer(model, config)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        optimizers=(optimizer, None),
        callbacks=[MetricsCallback(run_dir / "metrics.jsonl"), CheckpointMarkerCallback(),
                   NanGuardCallback(), HooksCallback(hooks)],
    )

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
    if eval_rows and trainer.state.global_step % settings.eval_steps != 0:
        trainer.evaluate()  # a final eval loss for the card

    # 5. Adapter, card, results (under DDP only rank 0 writes them).
    if not trainer.is_world_process_zero():
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
        "trainable_parameters": trainable,
        "wall_time_s": round(time.monotonic() - started, 2),
        "adapter_dir": str(adapter_dir),
    }
    rows = {"rows": len(dataset.rows), "train_rows": len(train_rows), "eval_rows": len(eval_rows),
            "dropped_rows": dropped}
    write_card(run_dir / "card.md", job_id=job_id or run_dir.name, config=config, model_info=model_info,
               dataset=dataset, rows=rows, results=results)
    return results


def _use_flash_attention(model, precision: dict) -> None:
    """Padding-free on CUDA: FlashAttention-2's varlen kernels when flash-attn is installed and the compute dtype is
    16-bit; otherwise (or if it refuses this model) sdpa stays, which keeps rows apart with a block-diagonal mask."""
    import importlib.util
    if importlib.util.find_spec("flash_attn") is None or not (precision["bf16"] or precision["fp16"]):
        return
    try:
        model.base_model.model.set_attn_implementation("flash_attention_2")
    except (ImportError, ValueError) as error:
        log.warning("FlashAttention-2 not used (%s); padding-free batches run with sdpa", error)
