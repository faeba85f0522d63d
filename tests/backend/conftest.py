"""Finished jobs on the tiny model, for the playground and export tests."""
from __future__ import annotations

import pytest


def finished_job(model: str, method: str = "lora", steps: int = 3, lr: float = 2e-2, seed: int = 42, r: int = 4,
                 dataset: str = "identity-demo") -> str:
    """Train a real adapter (a few steps, a high learning rate so it visibly moves the model) and record the
    job as completed, as the worker would."""
    from backend import jobs
    from backend.jobs import runner
    from backend.config import JobConfig

    config = JobConfig.from_dict({
        "model": model, "dataset": dataset, "stage": "sft", "method": method,
        "lora": {"r": r, "alpha": 2 * r, "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": 2, "learning_rate": lr, "max_length": 128,
                     "eval_fraction": 0.1, "eval_steps": 50, "save_steps": 50, "logging_steps": 1, "seed": seed}})
    job = jobs.create(config, status="running")
    finished = runner.run_job(job.id)           # train.log, the stage, the final status, as in the worker
    assert finished.status == "completed", finished.reason
    return job.id


@pytest.fixture
def lora_job(tiny_model) -> str:
    return finished_job(tiny_model)
