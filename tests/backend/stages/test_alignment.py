"""DPO, ORPO and KTO on a tiny model: every stage x method trains 2 steps and logs its metrics, the reference
is the starting policy without a second copy of the base, chaining on an SFT job starts from its adapter and
records the lineage, and a dataset of the wrong shape is refused before anything loads."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from backend.jobs.card import read_run_facts
from backend.metrics import read_records as read_metrics
from backend.config import JobConfig
from backend.data import DataError
from backend import stages
from tests.backend.stages.model_probe import probes

STAGE_DATA = {"dpo": "concise-pairs", "orpo": "concise-pairs", "kto": "concise-kto"}
STAGE_METRICS = {
    "dpo": ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"),
    "orpo": ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss",
             "log_odds_ratio"),
    "kto": ("kl", "rewards/chosen"),
}
METHOD_CASES = {
    "lora": {"method": "lora"},
    "qlora": {"method": "qlora"},
    "dora": {"method": "dora"},
    "pissa": {"method": "pissa", "lora": {"dropout": 0.0}},
    "loha": {"method": "loha"},       # peft's other families train in the preference stages too (issue 21)
    "vera": {"method": "vera", "lora": {"r": 16}},
    "olora": {"method": "olora"},     # LoRA initialisations (issue 21, part 3): base changed at init, like PiSSA
    "eva": {"method": "eva"},         # data-driven, B = 0: the reference is the base with the adapter disabled
    "corda": {"method": "corda"},     # data-driven, base keeps the residual
    "loftq": {"method": "loftq", "lora": {"r": 16, "alpha": 32}},   # 4-bit, adapter starts as a rounding-error fit
}
RESIDUAL_BASE = ("pissa", "olora", "corda")
KEEPS_REFERENCE = RESIDUAL_BASE + ("loftq",)     # the new adapter is no no-op: a frozen copy is the reference
PROBE = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"


def tiny_config(model: str, stage: str, **overrides) -> JobConfig:
    data = {"model": model, "dataset": STAGE_DATA.get(stage, "identity-demo"), "stage": stage,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.05},
            "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 5e-3, "max_length": 128,
                         "eval_fraction": 0.0, "save_steps": 2, "logging_steps": 1}}
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    config = JobConfig.from_dict(data)
    assert config.validate(cuda_available=False) == []
    return config


def run_stage(config: JobConfig, workspace, job_id: str, on_model=None) -> tuple[dict, object]:
    run_dir = workspace / "runs" / job_id
    run_dir.mkdir(parents=True)
    results = stages.train(config, run_dir, job_id=job_id, callbacks=probes(on_model))
    return results, run_dir


def snapshot(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        return model(**ids).logits.float()


def train_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("method", [case if case == "lora" else pytest.param(case, marks=pytest.mark.slow)
                                    for case in METHOD_CASES])  # the fast tier trains LoRA; the full suite all
@pytest.mark.parametrize("stage", ["dpo", "orpo", "kto"])
def test_stage_trains_each_method(stage, method, tiny_model, workspace, smol_tokenizer):
    config = tiny_config(tiny_model, stage, **METHOD_CASES[method])
    seen = {}

    def on_model(model, phase):
        seen[phase] = snapshot(model)
        if phase == "after_train":
            seen["logits"] = probe_logits(model, smol_tokenizer)
            seen["adapters"] = set(model.peft_config)
            seen["layer_types"] = {type(m).__name__ for m in model.modules()}

    job_id = f"job-{stage}-{method}"
    results, run_dir = run_stage(config, workspace, job_id, on_model)
    assert results["steps"] == 2

    # metrics: one line per step with the stage's reward metrics (the names the Jobs charts plot)
    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for key in STAGE_METRICS[stage] + ("loss", "learning_rate", "grad_norm"):
        assert any(key in r for r in records), f"{key} missing from metrics.jsonl"
    if stage == "dpo":
        # step 1: the policy equals its reference, so every reward is 0 and the sigmoid loss is ln 2; this holds
        # only if the reference really is the starting model (PiSSA, OLoRA, CorDA: base residual + initial adapter)
        assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
        assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
        assert "final_rewards_margins" in results and "final_rewards_accuracies" in results
    if stage == "kto":
        assert records[0]["loss"] == pytest.approx(0.5, abs=1e-4)   # 1 - sigmoid(0): policy == reference
        assert results["label_balance"] == {"desirable": 30, "undesirable": 30, "weighted_ratio": 1.0}
    if stage in ("dpo", "kto"):
        # no second copy of the base; a new adapter (PiSSA aside) needs no frozen adapter copy either
        expected = {"default", "ref"} if method in KEEPS_REFERENCE else {"default"}
        assert seen["adapters"] == expected
        assert ("adapter disabled" in results["reference"]) == (method not in KEEPS_REFERENCE)

    # only the trained adapter changed: base weights and the frozen reference copy did not
    before, after = seen["before_train"], seen["after_train"]
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(".default" in name for name in changed), changed[:5]
    if method in ("qlora", "loftq"):
        assert "Linear4bit" in seen["layer_types"]

    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "ref").exists()
    assert (run_dir / "checkpoints" / "checkpoint-2" / "COMPLETE").exists()
    facts = read_run_facts(run_dir)
    assert (run_dir / "run.json").is_file() and facts["results"]["steps"] == 2
    assert facts["stage"] == stage and facts["lineage"] == ["tiny-llama", f"{stage} {job_id}"]
    assert facts["hyperparameters"]["alignment"]["beta"] == 0.1

    if method in ("qlora", "loftq"):
        return  # 4-bit base: the float reload below would not match by design
    # the saved adapter on the untouched base reproduces the trained model (PiSSA: converted to plain LoRA)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from backend import models
    base = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-llama").path, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, adapter)
    assert (probe_logits(loaded, smol_tokenizer) - seen["logits"]).abs().max().item() < 1e-4


@pytest.mark.parametrize("loss_type,first_loss", [("ipo", 25.0), ("hinge", 1.0), ("simpo", None), ("cpo", None)])
def test_dpo_loss_variants(loss_type, first_loss, tiny_model, workspace):
    config = tiny_config(tiny_model, "dpo", alignment={"loss_type": loss_type})
    results, run_dir = run_stage(config, workspace, f"job-{loss_type}")
    records = train_records(run_dir)
    assert len(records) == 2 and all("rewards/margins" in r for r in records)
    if first_loss is not None:
        # at the start policy == reference: ipo (0 - 1/(2 beta))^2 = 25 with beta 0.1, hinge relu(1 - 0) = 1
        assert records[0]["loss"] == pytest.approx(first_loss, rel=1e-4)
    else:
        assert results["reference"].startswith("none")        # SimPO and CPO have no reference model
    if loss_type in ("cpo", "simpo"):   # CPO adds the chosen answer's NLL to its preference loss; SimPO does not
        nll = [r["nll_loss"] for r in records]
        assert all(n > 0 for n in nll) if loss_type == "cpo" else nll == [0.0, 0.0], nll
        assert all(r["loss"] >= r["nll_loss"] - 1e-6 for r in records)
    assert results["final_rewards_margins"] is not None


def test_dpo_chained_on_sft_starts_from_its_adapter(tiny_model, workspace):
    from safetensors.torch import load_file

    sft_results, sft_dir = run_stage(tiny_config(tiny_model, "sft", dataset="concise-pairs"), workspace, "job-sft")
    assert sft_results["steps"] == 2
    sft_weights = load_file(sft_dir / "adapter" / "adapter_model.safetensors")
    seen = {}

    def on_model(model, phase):
        seen[phase] = snapshot(model)
        seen["adapters"] = set(model.peft_config)

    config = tiny_config(tiny_model, "dpo", init_adapter="job-sft")
    results, run_dir = run_stage(config, workspace, "job-dpo", on_model)

    # the trainable adapter starts as the SFT adapter, and the frozen reference copy stays the SFT adapter
    before, after = seen["before_train"], seen["after_train"]
    assert seen["adapters"] == {"default", "ref"}
    assert sft_weights
    for key, tensor in sft_weights.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(before[name], tensor), name
        assert torch.equal(after[name.replace(".default.", ".ref.")], tensor), name
    assert any(not torch.equal(after[k.replace(".weight", ".default.weight")], v) for k, v in sft_weights.items())
    assert results["reference"] == "base + adapter of job job-sft (frozen copy)"
    # the reference is the SFT model itself: the first step compares the policy with itself
    first = train_records(run_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)

    facts = read_run_facts(run_dir)
    assert facts["lineage"] == ["tiny-llama", "sft job-sft", "dpo job-dpo"]
    assert facts["init_adapter"] == "job-sft"
    assert "tiny-llama -> sft job-sft -> dpo job-dpo" in (run_dir / "card.md").read_text()


def test_chaining_on_a_job_without_adapter_fails_before_loading(tiny_model, workspace, monkeypatch):
    refuse_model_loading(monkeypatch)
    config = tiny_config(tiny_model, "dpo", init_adapter="job-missing")
    with pytest.raises(ValueError, match="init_adapter: job 'job-missing' has no saved adapter"):
        run_stage(config, workspace, "job-chain-missing")


def refuse_model_loading(monkeypatch):
    from backend import models
    from backend.stages import common

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(common, "load_peft_model", refuse)


@pytest.mark.parametrize("stage,dataset,reason", [
    ("dpo", "identity-demo", "DPO needs a chosen and a rejected answer"),
    ("orpo", "identity-demo", "ORPO needs a chosen and a rejected answer"),
    ("kto", "identity-demo", "KTO needs answers labelled good or bad"),
    ("dpo", "concise-kto", "DPO needs a chosen and a rejected answer"),
    ("orpo", "concise-kto", "ORPO needs a chosen and a rejected answer"),
])
def test_wrong_shape_is_refused_before_anything_loads(stage, dataset, reason, workspace, monkeypatch):
    refuse_model_loading(monkeypatch)
    config = tiny_config("does-not-matter", stage, dataset=dataset)
    with pytest.raises(DataError, match=reason):
        run_stage(config, workspace, f"job-wrong-{stage}")


def test_kto_accepts_pairs_as_unpaired_labels(tiny_model, workspace):
    """Pairs feed KTO too (chosen = thumbs-up, rejected = thumbs-down), the way TRL unpairs them."""
    results, _ = run_stage(tiny_config(tiny_model, "kto", dataset="concise-pairs"), workspace, "job-kto-pairs")
    assert results["label_balance"]["desirable"] == results["label_balance"]["undesirable"] == 60


def test_kto_warns_when_labels_are_unbalanced(tiny_model, workspace, caplog):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 5 == 0} for i in range(40)]
    path = workspace / "skewed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING, logger="lorastudio"):
        results, _ = run_stage(tiny_config(tiny_model, "kto", dataset=str(path), training={"max_steps": 1}),
                               workspace, "job-kto-skew")
    assert results["label_balance"] == {"desirable": 8, "undesirable": 32, "weighted_ratio": 0.25}
    assert "set alignment.desirable_weight between 4.00 and 5.33" in caplog.text


def test_kto_needs_two_rows_per_step(workspace, monkeypatch):
    refuse_model_loading(monkeypatch)
    config = tiny_config("does-not-matter", "kto", training={"batch_size": 1})
    with pytest.raises(ValueError, match="KTO needs at least 2 rows per step"):
        run_stage(config, workspace, "job-kto-batch")


def test_every_stage_has_a_registered_recipe():
    from backend.stages import dpo, kto, orpo, recipe_for, sft
    from backend.vocab import Stage

    assert recipe_for("dpo") is dpo.RECIPE and recipe_for("orpo") is orpo.RECIPE and recipe_for("kto") is kto.RECIPE
    assert recipe_for(Stage.SFT) is sft.RECIPE
    assert all(recipe_for(stage).stage == stage for stage in Stage)
