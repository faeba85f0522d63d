"""KTO: answers labelled good or bad (e.g. thumbs-up / thumbs-down logs), no pairs needed.

Each answer is pushed up (desirable) or down (undesirable) relative to a frozen reference, against a KL
estimate built from mismatched prompt / answer pairs within each batch (so a step needs at least 2 rows, and
TRL keeps the batches in a fixed order: the rows are shuffled here, once, with the job's seed).
alignment.desirable_weight / undesirable_weight balance the two kinds: KTO expects
desirable rows x desirable_weight : undesirable rows x undesirable_weight between 1 and 4/3; outside that a
warning says which weight to set. The reference is the same as DPO's (common.choose_reference).
"""
from __future__ import annotations

import logging
import random

from backend.config import JobConfig
from backend.stages import common
from backend.stages.recipe import BuiltTrainer, PreferenceRecipe
from backend.vocab import Stage

log = logging.getLogger("lorastudio")

# KTO paper: desirable x weight / (undesirable x weight) should lie in [1, 4/3]
BALANCE_RANGE = (1.0, 4 / 3)


class KTORecipe(PreferenceRecipe):
    stage = Stage.KTO
    unit = "rows"
    answer_fields = ("completion", "label")
    result_keys = ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl")

    def check(self, config: JobConfig) -> None:
        if config.training.batch_size < 2:
            raise ValueError("training.batch_size: KTO needs at least 2 rows per step (its KL estimate pairs each "
                             "prompt with another row's answer); set batch_size to 2 or more")

    def example(self, config: JobConfig, tokenizer, row: dict) -> dict | None:
        example = super().example(config, tokenizer, row)
        if example is not None:
            example["label"] = bool(example["label"])
        return example

    def arrange(self, config: JobConfig, examples: list[dict], train_rows: list[dict]) -> dict:
        balance = label_balance(examples, config)
        random.Random(config.training.seed).shuffle(train_rows)  # mixed labels in every (fixed-order) batch
        log.info("labels: %d desirable, %d undesirable", balance["desirable"], balance["undesirable"])
        return {"label_balance": balance}

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        from trl import KTOConfig, KTOTrainer

        common.allow_reference_copy(model)
        kto_args = KTOConfig(desirable_weight=config.alignment.desirable_weight,
                             undesirable_weight=config.alignment.undesirable_weight,
                             **self.preference_args(config, args))
        trainer = KTOTrainer(args=kto_args, **inputs)
        return BuiltTrainer(trainer, common.choose_reference(model, config))


RECIPE = KTORecipe()


def label_balance(rows: list[dict], config: JobConfig) -> dict:
    """Counts of each label and the weighted ratio KTO cares about; warns (with the fix) when it is off."""
    desirable = sum(1 for row in rows if row["label"])
    undesirable = len(rows) - desirable
    weights = config.alignment
    if not desirable or not undesirable:
        missing = "undesirable (thumbs-down)" if desirable else "desirable (thumbs-up)"
        log.warning("KTO: the dataset has no %s rows, so it only learns in one direction; add some, or use SFT "
                    "for good examples only", missing)
        return {"desirable": desirable, "undesirable": undesirable, "weighted_ratio": None}
    if not weights.undesirable_weight:
        return {"desirable": desirable, "undesirable": undesirable, "weighted_ratio": None}
    ratio = (desirable * weights.desirable_weight) / (undesirable * weights.undesirable_weight)
    low, high = BALANCE_RANGE
    if not low <= ratio <= high:
        # the desirable weight that brings the ratio into range with the undesirable weight as set
        lower = undesirable * weights.undesirable_weight * low / desirable
        upper = undesirable * weights.undesirable_weight * high / desirable
        log.warning("KTO: %d desirable vs %d undesirable rows give a weighted ratio of %.2f, outside the %.2f to "
                    "%.2f KTO expects; set alignment.desirable_weight between %.2f and %.2f", desirable,
                    undesirable, ratio, low, high, lower, upper)
    return {"desirable": desirable, "undesirable": undesirable, "weighted_ratio": round(ratio, 3)}
