"""Checks before a job is queued or trained: the config, the model, the dataset and the init adapter.

Every problem at once, each as 'field: message', and nothing heavy loaded (no weights, no tokenizer). The
Train tab runs it before queuing; the worker runs it again before starting the training process.
"""
from __future__ import annotations

from backend import data, jobs, models, workspace
from backend.config import JobConfig
from backend.vocab import JobStatus, Stage


def problems(config: JobConfig) -> list[str]:
    errors = config.validate()
    model_problem = models.check(config.model.strip()) if config.model.strip() else None
    if model_problem:
        errors.append(f"model: {model_problem}")
    elif config.thinking is not None and config.model.strip():
        thinking_problem = models.thinking_problem(config.model.strip(), config.chat_template)
        if thinking_problem:
            errors.append(f"thinking: {thinking_problem}")
    if config.dataset.strip() and config.stage in Stage.values():
        report = data.validate(config.dataset, stage=config.stage, eval_fraction=config.training.eval_fraction)
        if not report.usable_for(config.stage):
            errors.append(f"dataset: {report.first_problem(config.stage) or f'not usable for {config.stage}'}")
    if isinstance(config.mix, dict) and config.stage in Stage.values():
        from backend.data.replay import REPLAY
        for name in config.mix:
            if name == REPLAY or not isinstance(name, str) or not name.strip():
                continue        # replay: distilled from the base when the job starts
            report = data.validate(name, stage=config.stage, eval_fraction=0)
            if not report.usable_for(config.stage):
                errors.append(f"mix.{name}: {report.first_problem(config.stage) or f'not usable for {config.stage}'}")
    if config.init_adapter:
        parent = jobs.get(config.init_adapter)
        adapter = workspace.run_dir(config.init_adapter) / "adapter" / "adapter_config.json"
        if parent is None or parent.status != JobStatus.COMPLETED or not adapter.exists():
            errors.append(f"init_adapter: '{config.init_adapter}' is not a completed job with an adapter")
    return errors
