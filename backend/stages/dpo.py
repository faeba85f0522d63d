"""DPO: preference pairs (prompt, chosen, rejected) against a frozen reference policy.

The reference is never a second copy of the base: a new adapter's reference is the base with the adapter
disabled; a chained job's is base + a frozen copy of the SFT adapter (common.choose_reference).
alignment.loss_type: sigmoid (DPO), ipo, hinge run in DPOTrainer; simpo is reference-free and length-normalised,
which TRL implements in its CPO trainer (loss_type="simpo", cpo_alpha=0), so that one runs there.
"""
from __future__ import annotations

from backend.config import JobConfig
from backend.stages import common
from backend.stages.recipe import BuiltTrainer, PreferenceRecipe
from backend.vocab import Stage


class DPORecipe(PreferenceRecipe):
    stage = Stage.DPO
    result_keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        common.allow_reference_copy(model)
        args = self.preference_args(config, args)
        if config.alignment.loss_type == "simpo":
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            # SimPO = CPO's simpo loss without its NLL term; the reward margin gamma keeps TRL's default (0.5)
            trainer = CPOTrainer(args=CPOConfig(loss_type="simpo", cpo_alpha=0.0, **args), **inputs)
            return BuiltTrainer(trainer, "none (SimPO is reference-free)")
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(args=DPOConfig(loss_type=[config.alignment.loss_type], **args), **inputs)
        return BuiltTrainer(trainer, common.choose_reference(model, config))


RECIPE = DPORecipe()
