"""The report's two model calls on the tiny model: batched generation answers as one-at-a-time generation
does (left padding changes nothing), and teacher-forced scores equal transformers' own loss on the answer."""
from __future__ import annotations

import pytest
import torch

from backend.evaluate.context import load_context
from backend.evaluate.generate import answer_ids, generate_ids, score
from backend.serve.chat import GenerationSettings

PROMPTS = [[{"role": "user", "content": text}] for text in
           ("Who are you?", "Name three colours.", "hi", "Write a haiku about the sea and the wind at night.",
            "What is 2 + 2?")]


@pytest.fixture
def ctx(lora_job):
    return load_context(lora_job, settings=GenerationSettings(max_new_tokens=8), batch_size=4)


def test_batched_answers_equal_one_at_a_time_for_base_and_adapter(ctx):
    for variant in ctx.variants:
        batched = generate_ids(ctx, variant, PROMPTS)
        single = generate_ids(ctx, variant, PROMPTS, batch_size=1)
        assert batched == single and all(batched), variant.key


def test_scores_are_transformers_loss_on_the_answer_tokens_only(ctx):
    answers = ["I am Nova.", "Red, green and blue.", "Hello!", "Waves hum.", "4"]
    scored = score(ctx, ctx.variant("adapter"), PROMPTS, answers)
    for messages, answer, result in zip(PROMPTS, answers, scored):
        prompt, tail = answer_ids(ctx, messages, answer)
        ids = torch.tensor([prompt + tail])
        labels = torch.tensor([[-100] * len(prompt) + tail])
        with torch.no_grad():
            expected = ctx.model(input_ids=ids, labels=labels).loss.item()
        assert result.tokens == len(tail) and result.loss == pytest.approx(expected, abs=1e-4)
    base = score(ctx, ctx.variant("base"), PROMPTS, answers)
    assert [round(b.loss, 3) for b in base] != [round(a.loss, 3) for a in scored]
