"""Trainer callbacks: one JSON line of metrics per logging step, complete-checkpoint markers, stop hooks.

The hooks (`should_stop`, `on_step`) let the job layer refresh a heartbeat and ask for a cooperative stop
without the stage knowing about queues.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from transformers import TrainerCallback

COMPLETE_MARKER = "COMPLETE"

# trainer log keys -> metrics.jsonl keys (everything else numeric is kept under its own name)
_RENAMES = {"loss": "loss", "eval_loss": "eval_loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}


@dataclass
class JobHooks:
    """What the job layer plugs into a stage; all optional."""
    on_step: Optional[Callable[[int, int], None]] = None        # (step, total_steps), every optimizer step
    should_stop: Optional[Callable[[], Optional[str]]] = None   # a reason to stop now, or None
    on_model: Optional[Callable[[object, str], None]] = None    # (model, "before_train" | "after_train")
    stop_reason: Optional[str] = field(default=None)            # set when a stop was requested


class MetricsCallback(TrainerCallback):
    """Appends {step, epoch, loss, eval_loss, learning_rate, grad_norm, tokens_per_second, elapsed_s, ...}."""

    def __init__(self, metrics_path: Path):
        self.metrics_path = Path(metrics_path)
        self.started = time.monotonic()
        self.last_time = self.started
        self.last_tokens = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        now = time.monotonic()
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                record[_RENAMES.get(key, key)] = _finite(value)
        tokens = logs.get("num_tokens") or state.num_input_tokens_seen or None
        if tokens is not None and "loss" in logs:
            if self.last_tokens is not None and now > self.last_time:
                record["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 2)
            elif now > self.started:
                record["tokens_per_second"] = round(tokens / (now - self.started), 2)
            self.last_tokens, self.last_time = tokens, now
        record["elapsed_s"] = round(now - self.started, 3)
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


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
    """Calls the job hooks each step; a stop request saves a checkpoint and ends training.

    Under DDP rank 0 decides and broadcasts, so that every rank stops at the same step.
    """

    def __init__(self, hooks: JobHooks):
        self.hooks = hooks
        self.faults = parse_faults(os.environ.get("LORASTUDIO_FAULT", ""))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        inject_faults(self.faults, state.global_step, model, args)
        if self.hooks.on_step:
            self.hooks.on_step(state.global_step, state.max_steps)
        reason = self.hooks.should_stop() if self.hooks.should_stop else None
        reason = _agree_across_ranks(reason)
        if reason:
            self.hooks.stop_reason = reason
            control.should_save = True
            control.should_training_stop = True


def parse_faults(text: str) -> dict:
    """LORASTUDIO_FAULT, for tests only: 'nan_at_step:3,crash_at_step:2,slow_steps:0.5,oom_if_batch_over:2'."""
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        faults[name] = float(value or 0)
    return faults


def inject_faults(faults: dict, step: int, model, args=None) -> None:
    if not faults:
        return
    if args is not None and args.per_device_train_batch_size > faults.get("oom_if_batch_over", 1e9):
        import torch
        raise torch.OutOfMemoryError(f"out of memory (injected at batch size {args.per_device_train_batch_size})")
    if "slow_steps" in faults:
        time.sleep(faults["slow_steps"])
    if faults.get("crash_at_step") == step:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.get("nan_at_step") == step + 1 and model is not None:
        import torch
        with torch.no_grad():  # poison the adapter so the next step's loss is NaN
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    parameter.fill_(float("nan"))


def _agree_across_ranks(reason: Optional[str]) -> Optional[str]:
    """Rank 0's decision for every rank (a no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason
    choices = [None, "cancel", "preempt"]
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


def read_metrics(path: Path) -> list[dict]:
    """All metric records; a half-written last line (a kill mid-write) is skipped."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _finite(value: float):
    return value if math.isfinite(value) else str(value)


def latest_complete_checkpoint(checkpoints_dir: Path, remove_torn: bool = True) -> Optional[Path]:
    """The newest checkpoint with a COMPLETE marker; unmarked (torn) folders are removed first unless
    remove_torn is False (a read-only look, e.g. for `jobs show`)."""
    import shutil

    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    complete = []
    for folder in checkpoints_dir.glob("checkpoint-*"):
        if not folder.is_dir():
            continue
        if (folder / COMPLETE_MARKER).exists():
            complete.append(folder)
        elif remove_torn:
            shutil.rmtree(folder, ignore_errors=True)
    return max(complete, key=lambda f: int(f.name.split("-")[-1]), default=None)
