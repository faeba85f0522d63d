"""Test-only fault injection, installed as a trainer callback through backend.stages.harness.register_callback.

In this process: `with faults("oom_if_batch_over:2"): ...`. In a worker or app subprocess: start it with
`fault_env("crash_at_step:2")` in its environment; this folder's sitecustomize.py then installs the faults in
every Python process started with that environment (the worker, the training process, torchrun's ranks).

Faults: nan_at_step:N (poison the adapter so step N's loss is NaN), crash_at_step:N (SIGKILL this process at
the end of step N), slow_steps:S (sleep S seconds each step), oom_if_batch_over:B (raise out-of-memory while
the batch size is above B).
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

ENV = "LORASTUDIO_TEST_FAULTS"
PLUGIN_DIR = Path(__file__).resolve().parent


def parse(text: str) -> dict:
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        faults[name] = float(value or 0)
    return faults


def fault_callback(faults: dict):
    from transformers import TrainerCallback

    class FaultCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if args.per_device_train_batch_size > faults.get("oom_if_batch_over", 1e9):
                import torch
                raise torch.OutOfMemoryError(f"out of memory (injected at batch size "
                                             f"{args.per_device_train_batch_size})")
            if "slow_steps" in faults:
                time.sleep(faults["slow_steps"])
            if faults.get("crash_at_step") == step:
                os.kill(os.getpid(), signal.SIGKILL)
            if faults.get("nan_at_step") == step + 1 and model is not None:
                import torch
                with torch.no_grad():  # poison the adapter so the next step's loss is NaN
                    for parameter in model.parameters():
                        if parameter.requires_grad:
                            parameter.fill_(float("nan"))

    return FaultCallback()


def install(text: str):
    """Register the faults for every job trained in this process; returns the factory (to unregister)."""
    from backend.stages import harness

    faults = parse(text)
    return harness.register_callback(lambda config: fault_callback(faults))


@contextmanager
def faults(text: str):
    """The faults for the jobs trained in this process while the block runs."""
    from backend.stages import harness

    factory = install(text)
    try:
        yield
    finally:
        harness.unregister_callback(factory)


def fault_env(text: str) -> dict:
    """Environment for a subprocess whose training jobs get these faults."""
    path = os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))
    return {ENV: text, "PYTHONPATH": path}
