"""Training stages: one readable file each, every one a top-to-bottom `run(config, run_dir, callbacks)`.

Modules are imported on demand so that importing the config (e.g. in the UI) does not pull in trl.
"""
from __future__ import annotations

import importlib

STAGE_MODULES = {"sft": "backend.stages.sft", "dpo": "backend.stages.dpo", "orpo": "backend.stages.orpo",
                 "kto": "backend.stages.kto"}
AVAILABLE_STAGES = tuple(STAGE_MODULES)


def get_runner(stage: str):
    """The `run` function of a stage."""
    return importlib.import_module(STAGE_MODULES[stage]).run
