"""Pretrain: continued pretraining (CPT) of the adapter on raw text, loss on every token.

What differs from the other stages: each row is one document, tokenised without a chat template and followed by
EOS; `pack()` concatenates the documents and cuts them into blocks of exactly training.max_length tokens (the last
partial block is dropped: backend.data.packing, the same code the dataset report counts with), so the harness's
seeded split holds out whole blocks. Perplexity (exp of the eval loss) is logged with every eval and kept in the
results and the card.

Trainer choice: plain transformers Trainer with default_data_collator on pre-packed blocks whose labels are the
input ids. Not DataCollatorForLanguageModeling(mlm=False): it sets the labels of pad-token ids to -100, and on many
chat models (SmolLM2 included) the pad token IS the EOS token, so the document boundaries would carry no loss. Not
TRL's SFTTrainer with packing: it packs inside the trainer, after the harness's split, so held-out blocks could
not be the harness's seeded split (nor counted by the dataset report beforehand); with the blocks already made,
it would add nothing to Trainer.
"""
from __future__ import annotations

import math

from backend.config import JobConfig
from backend.data.packing import document_ids, pack
from backend.stages.recipe import BuiltTrainer, StageRecipe
from backend.vocab import Stage

# TrainingArguments keys the shared arguments carry for TRL configs only
TRL_ONLY_ARGS = ("max_length",)


class PretrainRecipe(StageRecipe):
    stage = Stage.PRETRAIN
    unit = "blocks"
    all_dropped_error = ("the {rows} documents of dataset '{dataset}' hold fewer tokens than one block of "
                         "training.max_length={max_length}; add text or lower training.max_length")

    def example(self, config: JobConfig, tokenizer, row: dict) -> dict | None:
        return {"input_ids": document_ids(tokenizer, row["text"])}

    def pack(self, config: JobConfig, tokenizer, pairs: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
        rows = [row for row, _ in pairs]
        blocks = pack([example["input_ids"] for _, example in pairs], config.training.max_length)
        # a block's source row is the document it starts in (what the playground shows of a held-out block)
        return [(rows[start], {"input_ids": ids, "labels": list(ids)}) for start, ids in blocks]

    def final_results(self, results: dict) -> dict:
        loss = results.get("final_eval_loss")
        return {"eval_perplexity": perplexity(loss)} if loss is not None else {}

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        from transformers import Trainer, TrainingArguments, default_data_collator

        class PerplexityTrainer(Trainer):
            """Adds eval_perplexity next to every logged eval_loss (metrics.jsonl, the chart)."""

            def log(self, logs: dict, *rest, **kwargs) -> None:
                if "eval_loss" in logs:
                    logs = {**logs, "eval_perplexity": perplexity(logs["eval_loss"])}
                super().log(logs, *rest, **kwargs)

        training_args = TrainingArguments(**{
            **{key: value for key, value in args.items() if key not in TRL_ONLY_ARGS},
            "remove_unused_columns": False,            # the blocks hold exactly what the model takes
            "include_num_input_tokens_seen": "all",    # no padding; "non_padding" would skip EOS where pad == EOS
        })
        return BuiltTrainer(PerplexityTrainer(args=training_args, data_collator=default_data_collator, **inputs))


def perplexity(loss: float) -> float:
    """exp(mean token loss), capped where exp overflows (a diverged run)."""
    return round(math.exp(min(loss, 700.0)), 4)


RECIPE = PretrainRecipe()
