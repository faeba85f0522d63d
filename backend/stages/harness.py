"""The one training harness every stage runs through, top to bottom.

data (a wrong dataset or init adapter fails before anything heavy) -> tokenizer -> the recipe's examples and the
seeded split -> the base model with its adapter -> the recipe's TRL trainer with the studio callbacks -> train,
resuming from the newest complete checkpoint -> final eval (a capped, seeded subset of the held-out rows, batched)
-> (rank 0) adapter, results, run.json and card.md.
Returns the results the job record keeps, or {"stopped": reason, "steps": n} after a cooperative stop.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from backend import data as datasets_backend
from backend import models
from backend.config import JobConfig
from backend.stages import common, mixing
from backend.vocab import Phase

log = logging.getLogger("lorastudio")

# Extra trainer callbacks for every job trained in this process (a profiler, a test's fault injection): each
# factory gets the job's config and returns a transformers TrainerCallback.
CALLBACK_FACTORIES: list[Callable] = []


def register_callback(factory: Callable) -> Callable:
    """Add a callback factory for every later job in this process; returns it (usable as a decorator)."""
    CALLBACK_FACTORIES.append(factory)
    return factory


def unregister_callback(factory: Callable) -> None:
    if factory in CALLBACK_FACTORIES:
        CALLBACK_FACTORIES.remove(factory)


def train(config: JobConfig, run_dir: Path, hooks=None, job_id: str = "", callbacks=()) -> dict:
    """Train one job's stage in this process; `callbacks` are extra TrainerCallbacks for this run only."""
    from backend.jobs.callbacks import JobHooks
    from backend.stages import recipe_for

    started = time.monotonic()
    hooks = hooks or JobHooks()
    run_dir = Path(run_dir)
    recipe = recipe_for(config.stage)
    recipe.check(config)

    # 1. Data first: a wrong dataset (or a missing init_adapter) fails here, before the model loads.
    log.info("phase: loading data and model")
    hooks.phase(Phase.LOADING)
    dataset = datasets_backend.load_for_stage(config.dataset, config.stage,
                                              eval_fraction=config.training.eval_fraction)
    common.check_init_adapter(config)
    tokenizer = models.load_tokenizer(config.model, config.chat_template, config.thinking)
    split = split_examples(config, recipe, dataset, tokenizer)
    # other datasets mixed in by share (training rows only; the held-out rows stay the job's own)
    mixed, mix_sources = mixing.mix_in(config, recipe, tokenizer, len(split.train_examples),
                                       lambda done, total, text: hooks.phase(Phase.LOADING, done, total),
                                       dataset.rows)
    train_rows, eval_rows = split.train_examples + mixed, split.eval_examples
    facts = recipe.arrange(config, split.examples, train_rows)

    # 2. Model with its adapter (new, or a finished job's with init_adapter).
    precision = common.precision_flags(config)
    model, model_info, initial_dir, init_facts = common.load_peft_model(config, run_dir, precision["dtype"], tokenizer,
                                                            train_rows)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s (%s), method %s, stage %s: %d trainable parameters, world size %s", model_info.name,
             model_info.architecture, config.method, config.stage, trainable, os.environ.get("WORLD_SIZE", "1"))

    # 3. The stage's trainer around the shared arguments and callbacks; a resumed job goes on from the newest
    # complete checkpoint (torn ones are removed), and its metrics from that step.
    from datasets import Dataset

    from backend.jobs.checkpoints import checkpoint_step, latest_complete_checkpoint

    resume = latest_complete_checkpoint(run_dir / "checkpoints")

    # The eval: a fixed seeded subset of at most eval_max_rows held-out rows, in batches of eval_batch_size,
    # during training only every `every` steps (0: only after the last step, short jobs by default).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = common.total_steps(config, len(train_rows), world)
    every = common.eval_every(config, steps)
    eval_set = common.eval_subset(eval_rows, config.training.eval_max_rows, config.training.seed)
    eval_batch = common.eval_batch_size(config)
    if eval_rows:
        log.info("eval: %d of %d held-out rows, batch %d, %s", len(eval_set), len(eval_rows), eval_batch,
                 f"every {every} steps and after the last" if every else "after the last step only")
    plan = {"eval_rows": len(eval_set), "eval_batches": -(-len(eval_set) // max(eval_batch * world, 1)),
            "eval_every": every, "final_eval": bool(eval_set),
            "rows_per_step": config.training.batch_size * config.training.grad_accum * world}
    args = common.training_args(config, run_dir, precision, bool(eval_set), every)
    args.update(common.method_training_args(config, model))
    inputs = dict(
        model=model,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_set) if eval_set else None,
        processing_class=tokenizer,
        optimizers=(common.loraplus_optimizer(model, config), None),
        callbacks=studio_callbacks(config, run_dir, hooks, checkpoint_step(resume) if resume else 0, plan)
        + list(callbacks),
    )
    built = recipe.build_trainer(config, model, args, inputs, precision)
    trainer = built.trainer
    if built.reference:
        log.info("reference policy: %s", built.reference)

    # 4. Train.
    if resume:
        log.info("resuming from %s", resume.name)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if hooks.stop_reason:
        return {"stopped": hooks.stop_reason, "steps": trainer.state.global_step}
    step = trainer.state.global_step
    if eval_set and not any("eval_loss" in entry and entry.get("step") == step for entry in trainer.state.log_history):
        trainer.evaluate()  # a final eval loss for the card, unless the trainer just evaluated the last step

    # 5. Adapter, results, run.json and card (under DDP only rank 0 writes them).
    if not trainer.is_world_process_zero():
        return {"steps": trainer.state.global_step}
    from backend.jobs import card
    from backend.metrics import Metrics

    log.info("phase: saving the adapter and the card")
    hooks.phase(Phase.SAVING)
    adapter_dir, saved = common.save_trained(model, tokenizer, run_dir, initial_dir, config, precision["dtype"])
    metrics = Metrics.read(run_dir / "metrics.jsonl")
    losses = metrics.losses
    results = {
        "steps": trainer.state.global_step,
        "first_train_loss": losses[0] if losses else None,
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": metrics.last_eval_loss,
        **{"final_" + key.replace("/", "_"): metrics.last_training_value(key) for key in recipe.result_keys},
        **({"reference": built.reference} if built.reference else {}),
        **facts,
        **init_facts,
        **saved,
        "trainable_parameters": trainable,
        "wall_time_s": round(time.monotonic() - started, 2),
        "adapter_dir": str(adapter_dir),
    }
    results.update(recipe.final_results(results))
    rows = {"rows": len(dataset.rows), "train_rows": len(train_rows), "eval_rows": len(eval_rows),
            "evaluated_rows": len(eval_set), "dropped_rows": split.dropped}
    if mix_sources:     # train_rows above counts them too; the dataset's own share is train_rows - their rows
        rows["mix"] = [source.to_dict() for source in mix_sources]
    card.write_run(run_dir, job_id=job_id or run_dir.name, config=config, model_info=model_info,
                   dataset=dataset, rows=rows, results=results)
    return results


class Split:
    """A stage's examples, which canonical row each came from, and the seeded train / eval split."""

    def __init__(self, pairs: list[tuple[dict, dict]], dropped: int, eval_fraction: float, seed: int):
        self.examples = [example for _, example in pairs]
        self.dropped = dropped
        train, held_out = common.split_rows(pairs, eval_fraction, seed)
        self.train_examples = [example for _, example in train]
        self.eval_examples = [example for _, example in held_out]
        self.eval_source_rows = [row for row, _ in held_out]


def split_examples(config: JobConfig, recipe, dataset, tokenizer) -> Split:
    """Every row through the recipe (dropped ones counted and logged), then the split the trainer uses.

    The playground rebuilds a job's eval split with this same function, so both always agree.
    """
    pairs, dropped = [], 0
    for row in dataset.rows:
        example = recipe.example(config, tokenizer, row)
        if example is None:
            dropped += 1
        else:
            pairs.append((row, example))
    pairs = recipe.pack(config, tokenizer, pairs)
    max_length = config.training.max_length
    if dropped:
        log.warning(recipe.dropped_warning.replace("{unit}", recipe.unit), dropped, max_length)
    if not pairs:
        raise datasets_backend.DataError(recipe.all_dropped_error.format(
            rows=len(dataset.rows), dataset=dataset.id, max_length=max_length))
    common.uniform_tools([example for _, example in pairs])
    split = Split(pairs, dropped, config.training.eval_fraction, config.training.seed)
    log.info("dataset %s: %d %s, %d train, %d eval", dataset.id, len(dataset.rows), recipe.unit,
             len(split.train_examples), len(split.eval_examples))
    return split


def studio_callbacks(config: JobConfig, run_dir: Path, hooks, resumed_at_step: int = 0,
                     eval_plan: dict | None = None) -> list:
    """The callbacks every stage trains with: metrics.jsonl, COMPLETE markers, the NaN guard, any registered
    ones, and last the job hooks (heartbeat, step, phase, stop), so a stop is decided after everything else ran."""
    from backend.jobs.callbacks import CheckpointMarkerCallback, HooksCallback, MetricsCallback, NanGuardCallback

    metrics = MetricsCallback(run_dir / "metrics.jsonl", resumed_at_step, eval_plan) if _is_rank_zero() else None
    from backend.models import methods
    method_callbacks = methods.spec(config.method).trainer_callbacks
    return [*([metrics] if metrics else []), CheckpointMarkerCallback(), NanGuardCallback(),
            *(method_callbacks(config, run_dir) if method_callbacks else []),
            *(factory(config) for factory in CALLBACK_FACTORIES), HooksCallback(hooks)]


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
