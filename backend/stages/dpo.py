"""DPO: preference pairs (prompt, chosen, rejected) against a frozen reference policy.

The reference is never a second copy of the base: a new adapter's reference is the base with the adapter
disabled; a chained job's is base + a frozen copy of the SFT adapter (common.choose_reference).
alignment.loss_type: sigmoid (DPO), ipo, hinge run in DPOTrainer. simpo and cpo are reference-free and run in
TRL's CPO trainer: simpo is length-normalised (loss_type="simpo", cpo_alpha=0); cpo is contrastive preference
optimisation as published (Xu et al. 2024): DPO's sigmoid loss on the policy alone plus the NLL of the chosen
answer (loss_type="sigmoid", cpo_alpha=1).
"""
from __future__ import annotations

from backend.config import JobConfig
from backend.stages import common
from backend.stages.recipe import BuiltTrainer, PreferenceRecipe
from backend.vocab import Stage


# loss_type -> (TRL CPOTrainer's loss_type, cpo_alpha, the name in the card)
CPO_LOSSES = {"simpo": ("simpo", 0.0, "SimPO"), "cpo": ("sigmoid", 1.0, "CPO")}


class DPORecipe(PreferenceRecipe):
    stage = Stage.DPO
    result_keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        common.allow_reference_copy(model)
        args = self.preference_args(config, args)
        if config.alignment.loss_type in CPO_LOSSES:
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            # SimPO = CPO's simpo loss without its NLL term (the reward margin gamma keeps TRL's default, 0.5);
            # CPO = the sigmoid preference loss without a reference, plus the chosen answer's NLL (alpha 1)
            loss, alpha, name = CPO_LOSSES[config.alignment.loss_type]
            trainer = CPOTrainer(args=CPOConfig(loss_type=loss, cpo_alpha=alpha, **args), **inputs)
            return BuiltTrainer(trainer, f"none ({name} is reference-free)")
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(args=DPOConfig(loss_type=[config.alignment.loss_type], **args), **inputs)
        return BuiltTrainer(trainer, common.choose_reference(model, config))


RECIPE = DPORecipe()
