"""SFT: supervised fine-tuning on chat conversations, loss on assistant tokens only.

What differs from the other stages: each conversation is tokenised with the assistant mask (rows whose answer
max_length cuts away entirely are dropped), the batching mode (training.batching; see bench/padding.py), and
TRL's SFTTrainer. The harness does the rest.
"""
from __future__ import annotations

import logging

from backend.config import JobConfig, resolve_batching
from backend.data.render import tokenize_conversation
from backend.stages.recipe import BuiltTrainer, StageRecipe
from backend.vocab import Batching, Stage

log = logging.getLogger("lorastudio")


class SFTRecipe(StageRecipe):
    stage = Stage.SFT
    unit = "rows"
    dropped_warning = "%d rows lost their whole answer to max_length=%d and are skipped"
    all_dropped_error = ("all {rows} rows of dataset '{dataset}' lose their whole answer to "
                         "training.max_length={max_length}; raise training.max_length")

    def example(self, config: JobConfig, tokenizer, row: dict) -> dict | None:
        tokens = tokenize_conversation(tokenizer, row["messages"], config.training.max_length, row.get("tools"))
        if 1 not in tokens["assistant_masks"]:
            return None  # truncation removed the whole answer: the row would train nothing
        return {"input_ids": tokens["input_ids"], "assistant_masks": tokens["assistant_masks"]}

    def build_trainer(self, config: JobConfig, model, args: dict, inputs: dict, precision: dict) -> BuiltTrainer:
        from trl import SFTConfig, SFTTrainer

        settings = config.training
        batching = resolve_batching(settings.batching, not precision["use_cpu"],
                                    settings.batch_size * settings.max_length, config.method)
        padding_free = batching == Batching.PADDING_FREE
        if padding_free and not precision["use_cpu"]:
            _use_flash_attention(model, precision)
        log.info("batching: %s (training.batching=%s)", batching, settings.batching)
        sft_args = SFTConfig(**{
            **args,
            # rows are already cut to max_length; TRL refuses a max_length together with padding-free
            "max_length": None if padding_free else settings.max_length,
            "padding_free": padding_free,  # one row of all the examples, position ids restart at each
            "train_sampling_strategy": "group_by_length" if batching == Batching.GROUP_BY_LENGTH else "random",
            # padding-free batches hold no padding at all (and the pad token is often the real end-of-turn token)
            "include_num_input_tokens_seen": "all" if padding_free else "non_padding",
        })
        return BuiltTrainer(SFTTrainer(args=sft_args, **inputs))


def _use_flash_attention(model, precision: dict) -> None:
    """Padding-free on CUDA: FlashAttention-2's varlen kernels when flash-attn is installed and the compute dtype is
    16-bit; otherwise (or if it refuses this model) sdpa stays, which keeps rows apart with a block-diagonal mask."""
    import importlib.util
    if importlib.util.find_spec("flash_attn") is None or not (precision["bf16"] or precision["fp16"]):
        return
    try:
        # a peft model's transformers model, or the model itself (GaLore trains the base without peft)
        (model.base_model.model if hasattr(model, "peft_config") else model).set_attn_implementation(
            "flash_attention_2")
    except (ImportError, ValueError) as error:
        log.warning("FlashAttention-2 not used (%s); padding-free batches run with sdpa", error)


RECIPE = SFTRecipe()
