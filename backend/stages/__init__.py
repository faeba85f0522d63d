"""Training stages: each one a recipe file (what differs), all trained by one harness (what they share).

A new stage is one recipe module plus one line in RECIPES. Modules are imported on demand so that importing
the config (e.g. in the UI) does not pull in trl.
"""
from __future__ import annotations

import importlib

from backend.vocab import Stage

RECIPES = {
    Stage.SFT: "backend.stages.sft",
    Stage.DPO: "backend.stages.dpo",
    Stage.ORPO: "backend.stages.orpo",
    Stage.KTO: "backend.stages.kto",
    Stage.PRETRAIN: "backend.stages.pretrain",
}


def recipe_for(stage):
    """The recipe of a stage (a Stage or its name)."""
    return importlib.import_module(RECIPES[Stage(stage)]).RECIPE


def train(config, run_dir, hooks=None, job_id: str = "", callbacks=()) -> dict:
    """Train a job's stage in this process (see backend.stages.harness.train)."""
    from backend.stages import harness

    return harness.train(config, run_dir, hooks=hooks, job_id=job_id, callbacks=callbacks)
