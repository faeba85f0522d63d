"""Trainer callbacks: one JSON line of metrics per logging step, complete-checkpoint markers, stop hooks.

The hooks (`should_stop`, `on_step`) let the job layer refresh a heartbeat and ask for a cooperative stop
without the stage knowing about queues. Reading metrics and checkpoints (no transformers import) lives in
backend.metrics and backend.jobs.checkpoints.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from transformers import TrainerCallback

from backend.jobs.checkpoints import COMPLETE_MARKER
from backend.vocab import Control, Phase

log = logging.getLogger("lorastudio")


@dataclass
class JobHooks:
    """What the job layer plugs into a stage; all optional."""
    on_step: Optional[Callable[[int, int], None]] = None        # (step, total_steps), every optimizer step
    should_stop: Optional[Callable[[], Optional[str]]] = None   # a reason to stop now, or None
    on_progress: Optional[Callable[[], None]] = None            # training began, or an eval batch ran
    on_phase: Optional[Callable[[Phase, int, int], None]] = None  # (phase, done, total): what the job does now
    stop_reason: Optional[str] = field(default=None)            # set when a stop was requested

    def phase(self, phase: Phase, done: int = 0, total: int = 0) -> None:
        if self.on_phase:
            self.on_phase(phase, done, total)


class MetricsCallback(TrainerCallback):
    """Appends {step, epoch, loss, eval_loss, learning_rate, grad_norm, tokens_per_second, elapsed_s, ...}."""

    def __init__(self, metrics_path: Path, resumed_at_step: int = 0, eval_plan: dict | None = None):
        """resumed_at_step: the checkpoint this attempt resumes from (0: from the start). The records a lost
        attempt logged after it are dropped, so each step is logged once, and elapsed_s goes on from there.
        eval_plan: {eval_rows, eval_batches, eval_every, final_eval, rows_per_step}, written as one record
        {"step", "eval_plan"} when training begins, so the ETA can count the evaluations still to come."""
        self.metrics_path = Path(metrics_path)
        self.eval_plan = eval_plan
        self.elapsed_before = keep_records_through(self.metrics_path, resumed_at_step)
        self.started = time.monotonic()
        self.last_time = self.started
        self.last_tokens = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.monotonic()
        if self.eval_plan is not None and state.is_world_process_zero:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "eval_plan": self.eval_plan}) + "\n")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        now = time.monotonic()
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[key] = _finite(value)
        tokens = logs.get("num_tokens") or state.num_input_tokens_seen or None
        if tokens is not None and "loss" in logs:
            if self.last_tokens is not None and now > self.last_time:
                record["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 2)
            elif now > self.started:
                record["tokens_per_second"] = round(tokens / (now - self.started), 2)
            self.last_tokens, self.last_time = tokens, now
        record["elapsed_s"] = round(self.elapsed_before + now - self.started, 3)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def keep_records_through(metrics_path: Path, step: int) -> float:
    """Rewrite metrics.jsonl with only the records up to `step` (atomically: a kill leaves the old or the new
    file); returns the last kept record's elapsed_s (0.0 when none)."""
    from backend.metrics import read_records

    metrics_path = Path(metrics_path)
    if not metrics_path.exists():
        return 0.0
    records = read_records(metrics_path)
    kept = [record for record in records if record.get("step", 0) <= step]
    if len(kept) != len(records) or metrics_path.read_bytes()[-1:] not in (b"", b"\n"):
        partial = metrics_path.with_name(metrics_path.name + ".partial")
        partial.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
        partial.replace(metrics_path)
    return max((record.get("elapsed_s", 0.0) for record in kept), default=0.0)


class CheckpointMarkerCallback(TrainerCallback):
    """Writes COMPLETE into a checkpoint folder once the trainer has fully written it.

    A folder without the marker was torn by a kill mid-save and is never resumed from.
    """

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step, "time": time.time()}))


class HooksCallback(TrainerCallback):
    """Calls the job hooks each step; a stop request saves a checkpoint and ends training. Tells the phase
    (training, evaluating batch x of y) and logs where each phase begins and ends.

    Under DDP rank 0 decides and broadcasts, so that every rank stops at the same step.
    """

    def __init__(self, hooks: JobHooks):
        self.hooks = hooks
        self.training = False
        self.eval_batches = 0           # batches of the evaluation running now (0: none runs)
        self.eval_started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        log.info("phase: training, step %d of %d", state.global_step, state.max_steps)
        self.hooks.phase(Phase.TRAINING)
        if self.hooks.on_progress:
            self.hooks.on_progress()

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.hooks.on_progress:  # a long evaluation is progress too, not a hang
            self.hooks.on_progress()
        total = _length(eval_dataloader)
        if self.eval_batches == 0:
            self.eval_started = time.monotonic()
            rows = _length(getattr(eval_dataloader, "dataset", None))
            log.info("phase: evaluating%s at step %d: %s rows in %s batches",
                     "" if self.training else " (final)", state.global_step, rows or "?", total or "?")
        self.eval_batches += 1
        self.hooks.phase(Phase.EVALUATING, min(self.eval_batches, total) if total else self.eval_batches, total)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        log.info("evaluation done in %.1f s (%d batches)%s", time.monotonic() - self.eval_started,
                 self.eval_batches, f", eval loss {loss:.4f}" if isinstance(loss, float) else "")
        self.eval_batches = 0
        if self.training:
            self.hooks.phase(Phase.TRAINING)

    def on_step_end(self, args, state, control, **kwargs):
        if self.hooks.on_step:
            self.hooks.on_step(state.global_step, state.max_steps)
        reason = self.hooks.should_stop() if self.hooks.should_stop else None
        reason = _agree_across_ranks(reason)
        if reason:
            self.hooks.stop_reason = reason
            control.should_save = True
            control.should_training_stop = True


def _length(value) -> int:
    try:
        return len(value) if value is not None else 0
    except TypeError:  # an iterable dataset or loader without a length
        return 0


def _agree_across_ranks(reason: Optional[str]) -> Optional[str]:
    """Rank 0's decision for every rank (a no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason
    choices = [None, Control.CANCEL, Control.PREEMPT]
    code = choices.index(reason) if reason in choices else (2 if reason else 0)
    import torch
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([code], dtype=torch.long, device=device)
    dist.broadcast(flag, src=0)
    return choices[int(flag.item())]


class NonFiniteLossError(RuntimeError):
    pass


class NanGuardCallback(TrainerCallback):
    """Stops a job whose loss or grad norm became NaN/inf, with a message that says what to do."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                name = "loss" if key == "loss" else "gradient norm"
                raise NonFiniteLossError(f"{name} became {value} at step {state.global_step}; "
                                         "try a lower learning rate")


def _finite(value: float):
    return value if math.isfinite(value) else str(value)
