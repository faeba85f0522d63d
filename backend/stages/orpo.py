"""ORPO: SFT and preference in one stage, no reference model.

The loss is the NLL of the chosen answer plus beta x the log odds ratio of chosen over rejected (alignment.beta
is that odds-ratio weight, 0.1 to 0.5). Because it also does the SFT part, ORPO can start from a base model;
init_adapter still chains it on a finished SFT job. TRL keeps its trainer in trl.experimental.orpo.
"""
from __future__ import annotations

from backend.config import JobConfig
from backend.stages.recipe import BuiltTrainer, PreferenceRecipe
from backend.vocab import Stage


class ORPORecipe(PreferenceRecipe):
    stage = Stage.ORPO
    result_keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss",
                   "log_odds_ratio")

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return BuiltTrainer(ORPOTrainer(args=ORPOConfig(**self.preference_args(config, args)), **inputs))


RECIPE = ORPORecipe()
