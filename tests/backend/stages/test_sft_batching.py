"""training.batching: auto resolves per device, every mode keeps assistant-only labels through TRL's collator,
and padding-free batches give the same logits as the rows alone (on CPU, with PyTorch attention)."""
from __future__ import annotations

import json

import pytest
import torch
import trl.trainer.sft_trainer as trl_sft
import transformers.trainer

from backend.config import JobConfig, resolve_batching
from backend.data.render import tokenize_conversation
from backend import stages


def test_auto_resolves_per_device(monkeypatch):
    assert resolve_batching("auto", False, 4 * 512) == "padding_free"          # fastest measured on CPU, exact
    assert resolve_batching("auto", False, 8 * 2048) == "group_by_length"      # its dense mask grows with tokens^2
    assert resolve_batching("pad", cuda=False) == "pad"
    assert resolve_batching("group_by_length", cuda=True) == "group_by_length"
    assert JobConfig.from_dict({"training": {"batching": "packed"}}).validate(cuda_available=False) == [
        "training.batching: 'packed' is not one of auto, pad, group_by_length, padding_free"]
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert resolve_batching("auto", cuda=True) == "group_by_length"      # no flash-attn: sdpa would need a dense mask
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    assert resolve_batching("auto", cuda=True) == "padding_free"         # FlashAttention-2 varlen kernels


def test_padding_free_logits_equal_the_rows_alone(tiny_model):
    from bench.padding import packed_logits_diff
    assert packed_logits_diff(tiny_model) < 1e-5


@pytest.mark.parametrize("mode", ["pad", "group_by_length", "padding_free"])
def test_each_mode_trains_assistant_tokens_only(mode, tiny_model, smol_tokenizer, workspace, monkeypatch):
    rows = [{"messages": [{"role": "user", "content": "Question " + "why " * (3 * i)},
                          {"role": "assistant", "content": "Answer " + "because " * i}]} for i in range(12)]
    data = workspace / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected = {}
    for row in rows:
        tokens = tokenize_conversation(smol_tokenizer, row["messages"], 256)
        expected[tuple(tokens["input_ids"])] = [t if m else -100 for t, m in zip(tokens["input_ids"],
                                                                                  tokens["assistant_masks"])]
    batches, samplers = [], []
    collate = trl_sft.DataCollatorForLanguageModeling.torch_call
    monkeypatch.setattr(trl_sft.DataCollatorForLanguageModeling, "torch_call",
                        lambda self, examples: batches.append(collate(self, examples)) or batches[-1])
    grouped = transformers.trainer.LengthGroupedSampler
    monkeypatch.setattr(transformers.trainer, "LengthGroupedSampler",
                        lambda *a, **k: samplers.append(1) or grouped(*a, **k))
    config = JobConfig.from_dict({"model": tiny_model, "dataset": str(data), "lora": {"r": 4, "alpha": 8},
                                  "training": {"max_steps": 3, "batch_size": 4, "max_length": 256,
                                               "eval_fraction": 0.0, "save_steps": 100, "batching": mode}})
    stages.train(config, workspace / "runs" / mode, job_id=mode)

    assert batches and (len(samplers) > 0) == (mode == "group_by_length")
    for batch in batches:
        if mode == "padding_free":
            assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
            starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
            pieces = [(batch["input_ids"][0, a:b], batch["labels"][0, a:b]) for a, b in zip(starts, starts[1:])]
        else:
            pieces = [(ids[mask.bool()], labels[mask.bool()])
                      for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"])]
        for ids, labels in pieces:
            assert labels.tolist() == expected[tuple(ids.tolist())]   # exactly the assistant tokens, nothing else
    assert torch.cat([b["labels"].flatten() for b in batches]).ne(-100).any()


def test_the_train_tab_says_what_auto_does_here():
    from ui import train_tab
    line = train_tab.batching_line(JobConfig(), cuda=False)
    assert line.startswith("Batching: auto = padding_free on this machine's CPU")
    assert "padding_free on this machine's GPU" in train_tab.batching_line(
        JobConfig.from_dict({"training": {"batching": "padding_free"}}), cuda=True)
    assert "ls-batching" in train_tab.estimate_html(JobConfig().to_dict())
