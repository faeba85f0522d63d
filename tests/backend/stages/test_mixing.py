"""Datasets mixed into a job by share: the row counts follow the shares, the picks follow the seed, held-out rows
stay the job's own, and run.json and the card name every source."""
from __future__ import annotations

import pytest

from backend import stages
from backend.config import JobConfig
from backend.data import load_for_stage
from backend.jobs.card import read_run_facts
from backend.stages import mixing, recipe_for
from backend.stages.harness import split_examples


def mixed_config(model: str, mix, **training) -> JobConfig:
    return JobConfig.from_dict({
        "model": model, "dataset": "identity-demo", "mix": mix, "stage": "sft",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 3, "batch_size": 2, "learning_rate": 2e-2, "max_length": 128,
                     "eval_fraction": 0.1, "save_steps": 50, "logging_steps": 1, **training}})


@pytest.mark.parametrize("mix, problem", [
    ({"colour-demo": 0}, "mix.colour-demo: the share 0 must be a number above 0 and below 1"),
    ({"colour-demo": "a lot"}, "mix.colour-demo: the share 'a lot' must be a number"),
    ({"colour-demo": 0.6, "concise-pairs": 0.5}, "mix: the shares add up to 1.1; keep them below 1"),
    ({"identity-demo": 0.1}, "mix.identity-demo: is the job's own dataset"),
    ("replay 10%", "mix: expected datasets with their shares, e.g. {replay: 0.1}"),
])
def test_bad_mixes_are_one_sentence_each(mix, problem):
    problems = mixed_config("smollm2-135m-instruct", mix).validate(cuda_available=False)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_shares_set_the_row_counts_and_the_seed_sets_the_picks(tiny_model, smol_tokenizer):
    config = mixed_config(tiny_model, {"colour-demo": 0.1, "concise-pairs": 0.2})
    recipe = recipe_for("sft")
    own = split_examples(config, recipe, load_for_stage("identity-demo", "sft"), smol_tokenizer)
    n = len(own.train_examples)
    examples, sources = mixing.mix_in(config, recipe, smol_tokenizer, n)
    # shares of the whole training set: own 70 %, colour 10 %, pairs 20 % (SFT trains on their chosen answers)
    assert [s.used for s in sources] == [round(n * 0.1 / 0.7), round(n * 0.2 / 0.7)]
    assert len(examples) == sum(s.used for s in sources)
    assert abs(sources[0].used / (n + len(examples)) - 0.1) < 0.02
    assert all(not s.repeated and s.used <= s.available for s in sources)
    colour = {tuple(e["input_ids"]) for e in examples[:sources[0].used]}
    assert all("teal" in smol_tokenizer.decode(list(ids)).lower() for ids in colour) and len(colour) == sources[0].used

    again, _ = mixing.mix_in(config, recipe, smol_tokenizer, n)
    other, _ = mixing.mix_in(config.replace_training(seed=7), recipe, smol_tokenizer, n)
    assert again == examples and other != examples


def test_a_small_source_is_cycled_through_and_says_so(tiny_model, smol_tokenizer):
    config = mixed_config(tiny_model, {"colour-demo": 0.8})
    recipe = recipe_for("sft")
    examples, [source] = mixing.mix_in(config, recipe, smol_tokenizer, 60)
    assert source.used == 240 > source.available and source.repeated
    assert len({tuple(e["input_ids"]) for e in examples}) == source.available     # every row, then again


def test_a_source_that_does_not_suit_the_stage_is_one_sentence(tiny_model, smol_tokenizer):
    config = JobConfig.from_dict({"model": tiny_model, "dataset": "concise-pairs", "stage": "dpo",
                                  "mix": {"identity-demo": 0.1}})
    with pytest.raises(Exception, match="identity-demo") as error:
        mixing.mix_in(config, recipe_for("dpo"), smol_tokenizer, 40)
    assert "\n" not in str(error.value)


def test_a_mixed_job_trains_and_its_card_counts_every_source(tiny_model, workspace):
    run_dir = workspace / "runs" / "job-mix"
    run_dir.mkdir(parents=True)
    config = mixed_config(tiny_model, {"colour-demo": 0.1})
    results = stages.train(config, run_dir, job_id="job-mix")
    assert results["steps"] == 3
    facts = read_run_facts(run_dir)
    [source] = facts["dataset"]["mix"]
    own = facts["dataset"]["rows"] - facts["dataset"]["dropped_rows"]
    assert facts["dataset"]["eval_rows"] == round(own * 0.1)                  # held out: the job's own rows only
    own_train = own - facts["dataset"]["eval_rows"]
    assert facts["dataset"]["train_rows"] == own_train + source["rows"]
    assert source["name"] == "colour-demo" and source["share"] == 0.1 and source["rows"] == round(own_train / 9)
    card = (run_dir / "card.md").read_text()
    assert f"Mixed into the training rows: `colour-demo` ({source['id']}): {source['rows']} rows, 10 %" in card


def test_a_source_without_the_reasoning_of_the_jobs_rows_is_a_warning(tiny_model, smol_tokenizer, tmp_path):
    import json

    reasoning = tmp_path / "reasoning.jsonl"
    reasoning.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"<think>{i} and {i} make {2 * i}.</think>{2 * i}"}]}) + "\n"
        for i in range(20)))
    config = JobConfig.from_dict({**mixed_config(tiny_model, {"colour-demo": 0.2}).to_dict(),
                                  "dataset": str(reasoning)})
    own = load_for_stage(str(reasoning), "sft").rows
    _, [source] = mixing.mix_in(config, recipe_for("sft"), smol_tokenizer, 16, own_dataset_rows=own)
    assert source.warning == ("100% of the job's own rows answer with a <think> section but only 0% of "
                              "colour-demo's do: mixed in at 20% they teach the model that reasoning is optional, "
                              "so it may skip it; mix in a source whose answers reason, or lower its share")
    assert source.to_dict()["warning"] == source.warning
    # the other way round (a plain job, a reasoning source) is no warning
    assert mixing.reasoning_warning("r", 0.2, own=0.0, source=1.0) == ""
