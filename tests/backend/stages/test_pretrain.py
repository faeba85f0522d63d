"""Continued pretraining on the tiny model: blocks of packed documents with loss on every token, held-out blocks
with perplexity in the results and the card, and SFT chained on a CPT job with the lineage."""
from __future__ import annotations

import math

from backend import stages
from backend.config import JobConfig
from backend.jobs.card import read_run_facts
from backend.metrics import read_records as read_metrics
from backend.stages.pretrain import RECIPE, perplexity

TEXT = ("The lighthouse keeper climbs the stairs every evening and lights the lamp. The lamp turns once every "
        "twelve seconds, and sailors know the harbour by that slow beat. ")


def cpt_config(model: str, dataset: str, **training) -> JobConfig:
    config = JobConfig.from_dict({
        "model": model, "dataset": dataset, "stage": "pretrain", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 6, "batch_size": 2, "learning_rate": 2e-2, "max_length": 32,
                     "eval_fraction": 0.2, "save_steps": 50, "logging_steps": 1, **training}})
    assert config.validate(cuda_available=False) == []
    return config


def corpus(workspace) -> str:
    folder = workspace / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(TEXT * (i + 2))
    return str(folder)


def test_blocks_carry_every_token_with_eos_between_documents(tiny_model, workspace, smol_tokenizer):
    from backend.data import load_for_stage
    from backend.stages import recipe_for
    from backend.stages.harness import split_examples

    config = cpt_config(tiny_model, corpus(workspace))
    dataset = load_for_stage(config.dataset, "pretrain")
    assert recipe_for("pretrain") is RECIPE
    split = split_examples(config, RECIPE, dataset, smol_tokenizer)
    eos = smol_tokenizer.eos_token_id
    stream = [t for row in dataset.rows for t in smol_tokenizer(row["text"], add_special_tokens=False)["input_ids"]
              + [eos]]
    blocks = split.examples
    assert [b["input_ids"] for b in blocks] == [stream[i:i + 32] for i in range(0, len(stream) - 31, 32)]
    assert all(b["labels"] == b["input_ids"] for b in blocks)          # loss on every token, EOS included
    assert sum(b["input_ids"].count(eos) for b in blocks) >= 2           # document boundaries inside blocks
    assert len(split.eval_examples) == round(len(blocks) * 0.2) and split.eval_examples[0] in blocks


def test_loss_falls_and_perplexity_is_recorded(tiny_model, workspace):
    run_dir = workspace / "runs" / "job-cpt"
    run_dir.mkdir(parents=True)
    results = stages.train(cpt_config(tiny_model, corpus(workspace)), run_dir, job_id="job-cpt")
    assert results["steps"] == 6
    assert results["final_train_loss"] < results["first_train_loss"]
    assert results["eval_perplexity"] == perplexity(results["final_eval_loss"]) == round(
        math.exp(results["final_eval_loss"]), 4)
    logged = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]
    assert logged and logged[-1]["eval_perplexity"] == results["eval_perplexity"]
    facts = read_run_facts(run_dir)
    assert facts["results"]["eval_perplexity"] == results["eval_perplexity"] and "alignment" not in facts[
        "hyperparameters"]
    assert f"held-out perplexity {results['eval_perplexity']:.2f}" in (run_dir / "card.md").read_text()


def test_sft_chained_on_a_cpt_job_records_the_lineage(tiny_model, workspace):
    from backend import jobs, workspace as home
    from backend.jobs import runner

    cpt = jobs.create(cpt_config(tiny_model, corpus(workspace), max_steps=2), status="running")
    assert runner.run_job(cpt.id).status == "completed"
    sft = JobConfig.from_dict({
        "model": tiny_model, "dataset": "identity-demo", "stage": "sft", "init_adapter": cpt.id,
        "training": {"max_steps": 2, "batch_size": 2, "max_length": 64, "eval_fraction": 0.0, "save_steps": 50}})
    job = jobs.create(sft, status="running")
    finished = runner.run_job(job.id)
    assert finished.status == "completed", finished.reason
    finished_dir = home.run_dir(job.id)
    facts = read_run_facts(finished_dir)
    assert facts["lineage"] == [tiny_model, f"pretrain {cpt.id}", f"sft {job.id}"]
    assert f"{tiny_model} -> pretrain {cpt.id} -> sft {job.id}" in (finished_dir / "card.md").read_text()
