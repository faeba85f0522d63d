"""Prompt tuning (issue 21): virtual tokens trained in SFT on a tiny model. Only the prompt encoder changes, the
saved folder reloads with plain peft and reproduces the trained logits, and the preference stages either train
or are refused by the config with one sentence."""
from __future__ import annotations

import json

import pytest
import torch

from backend import stages
from backend.config import JobConfig
from tests.backend.stages.model_probe import probes

PROBE = "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
STAGE_DATA = {"sft": "identity-demo", "dpo": "concise-pairs", "orpo": "concise-pairs", "kto": "concise-kto"}


def tiny_config(model: str, stage: str = "sft", **prompt_tuning) -> JobConfig:
    return JobConfig.from_dict({
        "model": model, "dataset": STAGE_DATA[stage], "stage": stage, "method": "prompt_tuning",
        "prompt_tuning": {"virtual_tokens": 8, **prompt_tuning},
        "training": {"max_steps": 3, "batch_size": 2, "learning_rate": 5e-2, "max_length": 128,
                     "eval_fraction": 0.0, "save_steps": 50, "logging_steps": 1}})


def probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        return model(**ids).logits.float()


def train(config, workspace, job_id, on_model=None):
    run_dir = workspace / "runs" / job_id
    run_dir.mkdir(parents=True)
    return stages.train(config, run_dir, job_id=job_id, callbacks=probes(on_model)), run_dir


@pytest.mark.parametrize("init", ["text", "random"])
def test_prompt_tuning_trains_only_the_virtual_tokens(init, tiny_model, workspace, smol_tokenizer, recwarn):
    config = tiny_config(tiny_model, init=init)
    assert config.validate(cuda_available=False) == []
    states, seen = {}, {}

    def on_model(model, phase):
        states[phase] = {n: t.detach().clone() for n, t in model.named_parameters()}
        if phase == "after_train":
            seen["logits"] = probe_logits(model, smol_tokenizer)
            seen["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    results, run_dir = train(config, workspace, f"job-pt-{init}", on_model)
    assert results["steps"] == 3
    # auto batching did not pack rows: peft would have dropped their position ids (and warned so)
    assert not [w for w in recwarn if "Position ids are not supported" in str(w.message)]
    before, after = states["before_train"], states["after_train"]
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(name.startswith("prompt_encoder.") for name in changed), changed
    assert seen["trainable"] == 8 * 64          # virtual_tokens x hidden size of the tiny model
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PROMPT_TUNING" and saved["num_virtual_tokens"] == 8

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from backend import models
    base = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-llama").path, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, run_dir / "adapter")
    assert (probe_logits(loaded, smol_tokenizer) - seen["logits"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_prompt_tuning_trains_in_dpo_and_kto(stage, tiny_model, workspace):
    """TRL's DPO and KTO train the virtual tokens (ORPO is refused by the config: see tests/backend/test_config)."""
    config = tiny_config(tiny_model, stage, init="random")
    assert config.validate(cuda_available=False) == []
    states = {}
    results, _ = train(config, workspace, f"job-pt-{stage}",
                       lambda model, phase: states.update({phase: {n: t.detach().clone()
                                                                   for n, t in model.named_parameters()}}))
    assert results["steps"] == 3
    changed = [n for n in states["before_train"] if not torch.equal(states["before_train"][n],
                                                                     states["after_train"][n])]
    assert changed and all(name.startswith("prompt_encoder.") for name in changed), changed
