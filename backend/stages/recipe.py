"""What a stage is: a recipe the shared harness (backend.stages.harness) trains.

A recipe says only what differs between stages: how one canonical row becomes a training example (or is
dropped), what it adds to the split (KTO's label balance and order), and which TRL config and trainer it builds
(with its reference policy). Everything else (data loading, the split, the model with its adapter, the studio
callbacks, resume, stop, final eval, rank-0 saving, results, card and run.json) is the harness's, once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from backend.config import JobConfig
from backend.stages import common
from backend.vocab import Stage


@dataclass
class BuiltTrainer:
    trainer: object                 # a transformers / TRL Trainer, ready to train
    reference: str | None = None    # the reference policy in words (preference stages), for the log and results


class StageRecipe:
    stage: Stage
    unit = "rows"                   # what the log calls one row of this stage's data
    result_keys: tuple[str, ...] = ()   # logged values reported as final_<key> in the results
    # what the log and the error say of rows that max_length leaves nothing to train on
    dropped_warning = "%d {unit} have prompts longer than max_length=%d and are skipped"
    all_dropped_error = ("all {rows} prompts of dataset '{dataset}' fill training.max_length={max_length}; "
                         "raise training.max_length")

    def check(self, config: JobConfig) -> None:
        """Refuse a setting this stage cannot train with, before any data or model loads."""

    def example(self, config: JobConfig, tokenizer, row: dict) -> dict | None:
        """The training example of one canonical row, or None when max_length leaves it nothing to train."""
        raise NotImplementedError

    def pack(self, config: JobConfig, tokenizer, pairs: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
        """Before the split: (source row, example) pairs regrouped if the stage trains on something else than one
        example per row (pretrain: blocks of packed documents, so the eval split holds out whole blocks)."""
        return pairs

    def arrange(self, config: JobConfig, examples: list[dict], train_rows: list[dict]) -> dict:
        """After the split: reorder train_rows in place if the stage needs it; returns facts for the results."""
        return {}

    def final_results(self, results: dict) -> dict:
        """After training: values the stage derives from the shared results (pretrain: eval perplexity)."""
        return {}

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        """The stage's TRL config and trainer from the shared TrainingArguments keywords (args) and trainer
        keywords (inputs: model, datasets, tokenizer, optimizers, callbacks)."""
        raise NotImplementedError


class PreferenceRecipe(StageRecipe):
    """DPO, ORPO and KTO: rows whose prompt fills max_length are dropped; tools travel as a JSON string."""
    answer_fields: tuple[str, ...] = ("chosen", "rejected")
    unit = "pairs"

    def example(self, config: JobConfig, tokenizer, row: dict) -> dict | None:
        if not common.prompt_fits(tokenizer, row["prompt"], config.training.max_length, row.get("tools")):
            return None  # the prompt alone fills max_length: no answer token would be compared
        example = {"prompt": row["prompt"], **{key: row[key] for key in self.answer_fields}}
        if row.get("tools"):
            example["tools"] = json.dumps(row["tools"])  # TRL parses a JSON string; keeps the columns uniform
        return example

    @staticmethod
    def preference_args(config: JobConfig, args: dict) -> dict:
        """TRL's preference configs take beta; everything else is the shared TrainingArguments."""
        return {**args, "beta": config.alignment.beta}
