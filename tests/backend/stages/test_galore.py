"""GaLore (issue 21): the base's target linear layers train at full rank with GaLore AdamW on a tiny model; only
those layers change (embeddings, norms and LM head bitwise unchanged), the change is saved as a plain LoRA adapter
that reloads with peft on the original base and reproduces the trained logits, a lower save_rank reports its
reconstruction error, and what galore cannot do is refused by the config in one sentence each."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import TrainerCallback

from backend import stages
from backend.config import JobConfig
from backend.metrics import read_records as read_metrics
from backend.models import methods
from backend.stages import galore
from tests.backend.stages.model_probe import probes

PROBE = "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
STAGE_DATA = {"sft": "identity-demo", "dpo": "concise-pairs", "orpo": "concise-pairs", "kto": "concise-kto"}


def tiny_config(model: str, stage: str = "sft", target_modules="all-linear", steps: int = 4, **settings) -> JobConfig:
    return JobConfig.from_dict({
        "model": model, "dataset": STAGE_DATA[stage], "stage": stage, "method": "galore",
        "lora": {"target_modules": target_modules},
        "galore": {"rank": 4, "update_proj_gap": 2, "scale": 0.25, **settings},
        "training": {"max_steps": steps, "batch_size": 2, "learning_rate": 1e-2, "max_length": 128,
                     "eval_fraction": 0.0, "save_steps": 50, "logging_steps": 1, "lr_scheduler": "constant"}})


def probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        return model(**ids).logits.float()


class OptimizerProbe(TrainerCallback):
    """Which optimizer the trainer built, and the parameter groups it steps."""

    def __init__(self):
        self.seen = {}

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.seen = {"class": f"{type(inner).__module__}.{type(inner).__name__}",
                     "ranks": [group.get("rank") for group in inner.param_groups]}


def train(config, workspace, job_id, on_model=None, extra=()):
    run_dir = workspace / "runs" / job_id
    run_dir.mkdir(parents=True)
    return stages.train(config, run_dir, job_id=job_id, callbacks=probes(on_model) + list(extra)), run_dir


def reload(run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from backend import models
    base = AutoModelForCausalLM.from_pretrained(models.resolve("tiny-llama").path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, run_dir / "adapter")


def test_galore_trains_only_the_target_layers_and_saves_an_exact_lora(tiny_model, workspace, smol_tokenizer):
    config = tiny_config(tiny_model, steps=6)
    assert config.validate(cuda_available=False) == []
    states, seen = {}, {}

    def on_model(model, phase):
        states[phase] = {n: t.detach().clone() for n, t in model.state_dict().items()}
        if phase == "after_train":
            seen["logits"] = probe_logits(model, smol_tokenizer)

    optimizer = OptimizerProbe()
    results, run_dir = train(config, workspace, "job-galore", on_model, [optimizer])
    assert results["steps"] == 6
    # galore-torch's GaLoreAdamW (its class is named AdamW): the frozen rest, and the target layers at rank 4
    assert optimizer.seen == {"class": "galore_torch.adamw.AdamW", "ranks": [None, 4]}
    assert results["final_train_loss"] < results["first_train_loss"]
    before, after = states["before_train"], states["after_train"]
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    linear = {f"model.layers.{i}.{part}.weight" for i in range(2) for part in
              ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert changed == linear          # embeddings, norms and the LM head are bitwise unchanged
    assert results["trainable_parameters"] == sum(before[name].numel() for name in linear)

    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == saved["lora_alpha"] == 64    # full rank of 64 x 64
    assert sorted(saved["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                               "v_proj"]
    assert results["galore_adapter_rank"] == 64 and results["galore_reconstruction_error"] < 1e-5
    assert (probe_logits(reload(run_dir), smol_tokenizer) - seen["logits"]).abs().max().item() < 1e-4
    facts = json.loads((run_dir / "run.json").read_text())
    assert facts["results"]["galore_reconstruction_error"] == results["galore_reconstruction_error"]
    assert "GaLore" in (run_dir / "card.md").read_text()
    row = methods.spec("galore")
    assert row.mergeable and row.peft_type == "LORA" and row.trains_base


def test_a_lower_save_rank_reports_its_reconstruction_error(tiny_model, workspace, smol_tokenizer):
    config = tiny_config(tiny_model, target_modules=["q_proj", "v_proj"], save_rank=2)
    results, run_dir = train(config, workspace, "job-galore-r2")
    error = results["galore_reconstruction_error"]
    assert 0 < error < 1 and results["galore_adapter_rank"] == 2
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 2 and sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    assert reload(run_dir) is not None       # loads with plain peft on the original base


def test_galore_trains_orpo(tiny_model, workspace):
    config = tiny_config(tiny_model, "orpo", steps=2)
    assert config.validate(cuda_available=False) == []
    results, run_dir = train(config, workspace, "job-galore-orpo")
    assert results["steps"] == 2 and (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_galore_refusals_are_one_sentence_each():
    def problems(**data):
        return JobConfig.from_dict({"method": "galore", **data}).validate(cuda_available=False)

    assert problems() == []
    cases = {
        "lora.loraplus_ratio": problems(lora={"loraplus_ratio": 16}),
        "training.optim": problems(training={"optim": "adamw_8bit"}),
        "init_adapter": problems(init_adapter="job-1"),
        "method: galore cannot train DPO": problems(stage="dpo", dataset="concise-pairs"),
        "method: galore cannot train KTO": problems(stage="kto", dataset="concise-kto"),
    }
    for start, found in cases.items():
        assert len(found) == 1 and found[0].startswith(start), (start, found)
        assert found[0].count(". ") == 0 and not found[0].endswith(".")     # one sentence
    assert problems(galore={"rank": 0, "save_rank": -1}) == ["galore.rank: must be at least 1, got 0",
                                                             "galore.save_rank: must be at least 0, got -1"]


def test_lora_factors_rebuild_the_change_and_target_names_follow_peft(tiny_model_dir):
    delta = torch.randn(12, 8)
    b, a = galore.lora_factors(delta, 8)
    assert (b @ a - delta).abs().max().item() < 1e-5
    b, a = galore.lora_factors(delta, 3)
    assert b.shape == (12, 3) and a.shape == (3, 8)

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    names = galore.target_names(model, JobConfig.from_dict({"lora": {"target_modules": "attention"}}))
    assert len(names) == 8 and all(n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in names)
    assert "lm_head" not in galore.target_names(model, JobConfig())
    with pytest.raises(ValueError, match="names no linear layer"):
        galore.target_names(model, JobConfig.from_dict({"lora": {"target_modules": ["nothing_here"]}}))


def test_the_estimate_counts_full_gradients_and_low_rank_state_as_galore_keeps_them(tiny_model_dir):
    """The estimator against a direct count: GaLore AdamW stepped once on the tiny model's target layers."""
    from galore_torch import GaLoreAdamW
    from transformers import AutoModelForCausalLM

    from backend.models import estimate

    job = JobConfig.from_dict({"method": "galore", "lora": {"target_modules": "all-linear"}, "galore": {"rank": 4}})
    model = galore.prepare(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), job)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = GaLoreAdamW([{"params": trained, "rank": 4, "update_proj_gap": 200, "scale": 0.25,
                              "proj_type": "std"}], lr=1e-3)
    ids = torch.randint(0, 100, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    # bytes the state keeps alive: the projection matrix is a view of its SVD factor, whose whole storage stays
    state = sum(s["exp_avg"].numel() * 4 + s["exp_avg_sq"].numel() * 4
                + s["projector"].ortho_matrix.untyped_storage().nbytes() for s in optimizer.state.values())
    assert state > sum(4 * (s["exp_avg"].numel() * 2 + s["projector"].ortho_matrix.numel())
                       for s in optimizer.state.values())
    est = estimate.estimate(job, model_path=str(tiny_model_dir))
    assert est.adapter_params == sum(p.numel() for p in trained)
    assert est.optimizer == state and est.adapter == est.adapter_params * 4      # fp32 on CPU
    lora = estimate.estimate(JobConfig.from_dict({"lora": {"r": 4}}), model_path=str(tiny_model_dir))
    assert est.optimizer < est.adapter_params * 8 and est.adapter > lora.adapter
    assert any("galore" in note for note in est.notes)


def test_a_galore_job_resumes_from_its_checkpoint(tiny_model, workspace):
    """A GaLore checkpoint is the whole model plus GaLore AdamW's state (a projector object per layer), which the
    trainer reads with torch.load(weights_only=True): resuming loads both and trains on."""
    import dataclasses

    first = tiny_config(tiny_model, steps=2)
    first = dataclasses.replace(first, training=dataclasses.replace(first.training, save_steps=2))
    results, run_dir = train(first, workspace, "job-galore-resume")
    assert results["steps"] == 2 and (run_dir / "checkpoints" / "checkpoint-2" / "COMPLETE").exists()
    longer = dataclasses.replace(first, training=dataclasses.replace(first.training, max_steps=4))
    resumed = stages.train(longer, run_dir, job_id="job-galore-resume")
    assert resumed["steps"] == 4 and (run_dir / "adapter" / "adapter_config.json").is_file()
    records = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert records == [1, 2, 3, 4]       # steps 3 and 4 came from the resumed run, 1 and 2 were kept


def test_an_unfinished_galore_job_says_why_its_checkpoint_does_not_play(tiny_model, workspace):
    import dataclasses

    from backend import jobs
    from backend.models import adapters

    config = tiny_config(tiny_model, steps=2)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, save_steps=2))
    job = jobs.create(config)
    stages.train(config, job.run_dir, job_id=job.id)
    shutil.rmtree(job.run_dir / "adapter")          # as if the job were stopped after its checkpoint
    with pytest.raises(adapters.AdapterError, match="checkpoints are whole models"):
        adapters.adapter_source(job.id)
