"""The forgetting and "your text" sections on the tiny model: the KL is 0 against itself and equals a direct
torch computation, changed answers are a share, the text's perplexity is exp(mean NLL) of a direct computation
(one window and sliding windows), and a file that is not UTF-8, empty or missing gets one sentence."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from backend.evaluate import forgetting
from backend.evaluate.common import EvalError, Variant
from backend.evaluate.context import load_context
from backend.evaluate.generate import answer_ids
from backend.serve.chat import GenerationSettings


@pytest.fixture
def ctx(lora_job):
    return load_context(lora_job, settings=GenerationSettings(max_new_tokens=6), batch_size=4)


def test_shipped_prompts_are_varied_and_a_subset_spreads_over_categories():
    rows = forgetting.load_prompts()
    categories = {row["category"] for row in rows}
    assert 90 <= len(rows) <= 120 and len({row["prompt"] for row in rows}) == len(rows)
    assert {"facts", "maths", "code", "languages", "safety", "summarising"} <= categories
    chosen = forgetting.pick(rows, len(categories), seed=42)
    assert {rows[i]["category"] for i in chosen} == categories and chosen == sorted(chosen)
    assert forgetting.pick(rows, 10, 42) == forgetting.pick(rows, 10, 42) != forgetting.pick(rows, 10, 7)
    for line in forgetting.PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
        assert set(json.loads(line)) == {"prompt", "category"}


def test_forgetting_section_kl_changed_and_loss(ctx):
    section = forgetting.run(ctx, None, limit=5)
    metrics = {m.name: m for m in section.metrics}
    assert section.section == "forgetting" and len(section.rows) == 5
    assert metrics["kl_per_token"].values["base"] == 0.0 and metrics["kl_per_token"].values["adapter"] > 0
    assert not metrics["kl_per_token"].higher_is_better and not metrics["changed_answers"].higher_is_better
    assert 0.0 <= metrics["changed_answers"].values["adapter"] <= 1.0
    assert all(math.isfinite(v) for v in metrics["base_answer_loss"].values.values())
    for row in section.rows:
        assert set(row.answers) == {"base", "adapter"} and row.note.startswith("category: ")
        assert row.scores["adapter"]["changed"] == float(row.answers["adapter"] != row.answers["base"])
        assert row.scores["adapter"]["kl_per_token"] >= 0
    changed = sum(r.scores["adapter"]["changed"] for r in section.rows) / 5
    assert metrics["changed_answers"].values["adapter"] == pytest.approx(changed)
    assert any(note.startswith("adapter by category") for note in section.notes)

    # the base compared with itself (a second column with the adapter off): nothing moved
    same = replace(ctx, variants=[ctx.variants[0], Variant("same", "base again", ctx.model, None)])
    itself = {m.name: m.values for m in forgetting.run(same, None, limit=3).metrics}
    assert itself["kl_per_token"]["same"] == 0.0 and itself["changed_answers"]["same"] == 0.0
    assert itself["base_answer_loss"]["same"] == pytest.approx(itself["base_answer_loss"]["base"], abs=1e-6)


def test_kl_equals_a_direct_torch_computation_on_one_prompt(ctx):
    section = forgetting.run(ctx, None, limit=1)
    row = section.rows[0]
    messages = [{"role": "user", "content": row.prompt}]
    prompt, tail = answer_ids(ctx, messages, row.answers["base"])
    ids = torch.tensor([prompt + tail])
    with torch.no_grad():
        with ctx.model.disable_adapter():
            base = torch.log_softmax(ctx.model(input_ids=ids).logits[0].double(), -1)
        ctx.model.set_adapter("adapter")
        adapter = torch.log_softmax(ctx.model(input_ids=ids).logits[0].double(), -1)
    positions = slice(len(prompt) - 1, len(prompt) - 1 + len(tail))
    expected = torch.nn.functional.kl_div(adapter[positions], base[positions], log_target=True,
                                          reduction="none").sum(-1).mean().item()
    kl = {m.name: m.values for m in section.metrics}["kl_per_token"]["adapter"]
    assert expected > 0 and kl == pytest.approx(expected, rel=1e-4, abs=1e-7)
    loss = -adapter[positions].gather(1, torch.tensor(tail)[:, None]).mean().item()
    assert {m.name: m.values for m in section.metrics}["base_answer_loss"]["adapter"] == pytest.approx(loss, abs=1e-4)


TEXT = ("The quick brown fox jumps over the lazy dog. Fine-tuning a small model changes how it writes. "
        "Perplexity measures how surprised a model is by a text; lower means the text looks familiar. ")


def _direct_nll(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Sliding-window NLL the way the transformers perplexity guide does it: labels masked with -100."""
    total, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        target = end - previous_end
        chunk = torch.tensor([ids[begin:end]])
        labels = chunk.clone()
        labels[:, :-target] = -100
        predicted = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += model(input_ids=chunk, labels=labels).loss.item() * predicted
        count += predicted
        previous_end = end
        if end == len(ids):
            break
    return total, count


def test_corpus_perplexity_is_exp_of_the_mean_nll(ctx, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(TEXT, encoding="utf-8")
    section = forgetting.corpus(ctx, None, short)
    ids = ctx.tokenizer(TEXT)["input_ids"]
    assert len(ids) < ctx.config.training.max_length and len(section.rows) == 1
    values = {m.name: m.values for m in section.metrics}
    with torch.no_grad():
        ctx.model.set_adapter("adapter")
        adapter = ctx.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
        with ctx.model.disable_adapter():
            base = ctx.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert values["perplexity"]["adapter"] == pytest.approx(math.exp(adapter), rel=1e-4)
    assert values["perplexity"]["base"] == pytest.approx(math.exp(base), rel=1e-4)
    assert values["loss"]["base"] != pytest.approx(values["loss"]["adapter"], abs=1e-4)

    long = tmp_path / "long.txt"
    long.write_text(TEXT * 12, encoding="utf-8")           # several windows of max_length 128
    ids = ctx.tokenizer(TEXT * 12)["input_ids"]
    window = ctx.config.training.max_length
    section = forgetting.corpus(ctx, None, long)
    assert len(section.rows) > 2 and not any(note.startswith("only the first") for note in section.notes)
    ctx.model.set_adapter("adapter")
    total, count = _direct_nll(ctx.model, ids, window, window // 2)
    assert count == len(ids) - 1
    loss = {m.name: m.values for m in section.metrics}["loss"]["adapter"]
    assert loss == pytest.approx(total / count, rel=1e-4)

    capped = forgetting.corpus(replace(ctx, max_rows=2), None, long)
    assert len(capped.rows) == 2 and any("the cap is 2 windows" in note for note in capped.notes)


def _fake_ctx():
    return SimpleNamespace(config=SimpleNamespace(training=SimpleNamespace(max_length=128)), max_rows=10)


def test_corpus_file_problems_are_one_sentence(tmp_path):
    latin = tmp_path / "notes-latin1.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(EvalError) as error:
        forgetting.corpus(_fake_ctx(), None, latin)
    message = str(error.value)
    assert "notes-latin1.txt is not UTF-8" in message and "offset 3 (0xe9)" in message and "iconv" in message
    assert message.count(". ") == 0 and "\n" not in message

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(EvalError, match="empty.txt is empty; give a plain-text file"):
        forgetting.corpus(_fake_ctx(), None, empty)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t", encoding="utf-8")
    with pytest.raises(EvalError, match=r"blank.txt is empty \(only whitespace\)"):
        forgetting.corpus(_fake_ctx(), None, blank)
    with pytest.raises(EvalError, match="there is no file at .*missing.txt"):
        forgetting.corpus(_fake_ctx(), None, tmp_path / "missing.txt")


def test_windows_score_every_token_once():
    for length in (2, 5, 128, 129, 300, 1000):
        spans = forgetting._windows(length, 128, 64)
        scored = [p for _, end, first in spans for p in range(first, end)]
        assert scored == list(range(1, length))
        assert all(end - begin <= 128 for begin, end, _ in spans)
        assert all(first - begin >= 64 for begin, _, first in spans[1:])
