"""CPT -> SFT -> DPO on the tiny model: each stage starts from the adapter of the one before, the lineage of the last
card reads base -> pretrain -> sft -> dpo, and the CPT job's held-out rows are its held-out blocks of text (the
opening as the prompt, the continuation as the reference), not preference rows."""
from __future__ import annotations

import torch

from backend import stages
from backend.config import JobConfig
from backend.evaluate import heldout
from backend.jobs.card import read_run_facts
from tests.backend.stages.test_pretrain import TEXT, corpus

def config(model: str, stage: str, dataset: str, **extra) -> JobConfig:
    data = {"model": model, "dataset": dataset, "stage": stage, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 2e-2,
                         "max_length": 32 if stage == "pretrain" else 128,
                         "eval_fraction": 0.2 if stage == "pretrain" else 0.0, "save_steps": 50,
                         "logging_steps": 1}, **extra}
    parsed = JobConfig.from_dict(data)
    assert parsed.validate(cuda_available=False) == []
    return parsed


def train(config: JobConfig, workspace, job_id: str, seen: dict | None = None):
    from transformers import TrainerCallback

    class FirstWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.update({name: t.detach().clone() for name, t in model.state_dict().items() if "lora_" in name})

    run_dir = workspace / "runs" / job_id
    run_dir.mkdir(parents=True)
    stages.train(config, run_dir, job_id=job_id, callbacks=[FirstWeights()] if seen is not None else [])
    return run_dir


def test_cpt_then_sft_then_dpo_start_from_each_other_and_record_the_lineage(tiny_model, workspace):
    from safetensors.torch import load_file

    cpt_dir = train(config(tiny_model, "pretrain", corpus(workspace)), workspace, "job-cpt")
    cpt_weights = load_file(cpt_dir / "adapter" / "adapter_model.safetensors")
    seen: dict = {}
    sft_dir = train(config(tiny_model, "sft", "identity-demo", init_adapter="job-cpt"), workspace, "job-sft", seen)
    # the SFT adapter starts as the CPT adapter (peft names it "default" once loaded), not a fresh one
    assert cpt_weights and all(torch.equal(seen[key.replace(".weight", ".default.weight")], tensor)
                               for key, tensor in cpt_weights.items())
    assert any(tensor.abs().sum() > 0 for key, tensor in cpt_weights.items() if "lora_B" in key)  # CPT trained B
    dpo_dir = train(config(tiny_model, "dpo", "concise-pairs", init_adapter="job-sft"), workspace, "job-dpo")

    assert read_run_facts(sft_dir)["lineage"] == [tiny_model, "pretrain job-cpt", "sft job-sft"]
    facts = read_run_facts(dpo_dir)
    assert facts["lineage"] == [tiny_model, "pretrain job-cpt", "sft job-sft", "dpo job-dpo"]
    assert facts["init_adapter"] == "job-sft"
    assert f"{tiny_model} -> pretrain job-cpt -> sft job-sft -> dpo job-dpo" in (dpo_dir / "card.md").read_text()


def test_held_out_rows_of_a_cpt_job_are_its_held_out_blocks(tiny_model, workspace, smol_tokenizer):
    from backend import data
    from backend.stages import recipe_for
    from backend.stages.harness import split_examples

    cpt = config(tiny_model, "pretrain", corpus(workspace))
    held = heldout.split(cpt, "job-cpt", smol_tokenizer)
    blocks = split_examples(cpt, recipe_for("pretrain"), data.load_for_stage(cpt.dataset, "pretrain"),
                            smol_tokenizer).eval_examples
    assert held.held_out == len(held.rows) == len(blocks) > 0
    for row, block in zip(held.rows, blocks):
        # a user turn with the opening of held-out text; the reference continues it inside one document
        assert [m["role"] for m in row.messages] == ["user"] and row.prompt_text and row.reference
        assert row.chosen is None and row.rejected is None and row.label is None
        text = smol_tokenizer.decode(block["input_ids"], skip_special_tokens=False)
        assert row.prompt_text in text and row.reference in text
        assert text.index(row.prompt_text) < text.index(row.reference)
        assert smol_tokenizer.eos_token not in row.prompt_text + row.reference
    # a canonical text row (what a document is) is cut the same way: opening, then its continuation
    row = heldout.to_row("pretrain", {"text": TEXT}, 0, smol_tokenizer)
    assert TEXT.startswith(row.prompt_text) and row.reference and TEXT.rstrip().endswith(row.reference)
