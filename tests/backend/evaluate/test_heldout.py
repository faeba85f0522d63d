"""Held-out rows: the stage's own split (what train.log counted, what the Playground's eval split shows), a
seeded cap for the report, one sentence when there is no split, and each stage's row read into prompt,
reference, chosen / rejected, label and tool calls."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from backend import jobs
from backend.config import JobConfig
from backend.evaluate import heldout
from backend.evaluate.common import EvalError
from backend.serve import playground
from backend.vocab import Stage

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


@dataclass(eq=False)
class Ctx:                           # the fields of an EvalContext that held-out rows read
    job_id: str
    config: JobConfig
    max_rows: int
    seed: int = 42


def config_for(model: str, stage: str = "sft", dataset: str = "identity-demo", eval_fraction: float = 0.1):
    return JobConfig.from_dict({"model": model, "dataset": dataset, "stage": stage,
                                "training": {"eval_fraction": eval_fraction, "max_length": 128}})


def test_rows_are_the_stage_split_and_the_playground_shows_them(lora_job):
    from backend import data, models
    from backend.stages import recipe_for
    from backend.stages.harness import split_examples

    job = jobs.get(lora_job)
    held = heldout.split(job.config, lora_job)
    logged = re.search(r"(\d+) train, (\d+) eval", (job.run_dir / "train.log").read_text())
    assert held.held_out == len(held.rows) == int(logged.group(2)) > 0 and held.notes == []
    tokenizer = models.load_tokenizer(job.config.model)
    source = split_examples(job.config, recipe_for("sft"), data.load_for_stage("identity-demo", "sft"),
                            tokenizer).eval_source_rows
    assert [row.messages + [{"role": "assistant", "content": row.reference}] for row in held.rows] \
        == [r["messages"] for r in source]
    assert all(row.messages[-1]["role"] == "user" and row.reference and row.chosen is None for row in held.rows)
    prompts = playground.eval_prompts(lora_job, limit=3)
    assert [(p.messages, p.reference) for p in prompts] == [(r.messages, r.reference) for r in held.rows[:3]]

    facts_path = job.run_dir / "run.json"                   # the dataset the job trained on, as run.json says
    facts = json.loads(facts_path.read_text())
    facts["dataset"]["sha256"] = "0" * 64
    facts_path.write_text(json.dumps(facts))
    assert "changed since job" in heldout.split(job.config, lora_job).notes[0]


def test_the_report_takes_a_seeded_subset_in_split_order(tiny_model):
    config = config_for(tiny_model, "dpo", "concise-pairs", eval_fraction=0.5)
    every = heldout.split(config, "job-x").rows
    ctx = Ctx("job-x", config, max_rows=5)
    held = heldout.load(ctx)
    assert len(every) == 30 and len(held.rows) == 5 and held.held_out == 30
    assert [r.index for r in held.rows] == sorted(r.index for r in held.rows)
    assert [r.prompt_text for r in held.rows] == [every[r.index].prompt_text for r in held.rows]
    assert heldout.load(ctx) is held                        # built once per context
    assert [r.index for r in heldout.load_rows(Ctx("job-x", config, 5))] == [r.index for r in held.rows]
    assert [r.index for r in heldout.load_rows(Ctx("job-x", config, 5, seed=7))] != [r.index for r in held.rows]
    assert held.notes == ["5 of the 30 held-out rows (a seeded subset; max_rows = 5)"]
    assert len(heldout.load_rows(Ctx("job-x", config, 100))) == 30


def test_no_eval_split_is_one_sentence_with_the_fix(tiny_model):
    with pytest.raises(EvalError, match=r"job j1 trained without an eval split \(training.eval_fraction = 0\).*"
                                        r"retrain it with an eval fraction"):
        heldout.split(config_for(tiny_model, eval_fraction=0.0), "j1")
    with pytest.raises(EvalError, match=r"job j2 has an empty eval split: training.eval_fraction = 0.001 of the "
                                        r"\d+ rows of dataset identity-demo rounds to no row; retrain"):
        heldout.split(config_for(tiny_model, eval_fraction=0.001), "j2")
    with pytest.raises(EvalError, match="cannot be rebuilt from dataset no-such-data"):
        heldout.split(config_for(tiny_model, dataset="no-such-data"), "j3")


def test_each_stage_row_becomes_prompt_reference_and_its_extras(smol_tokenizer):
    prompt = [{"role": "user", "content": "Capital of France?"}]
    dpo = heldout.to_row(Stage.DPO, {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Paris."}],
                                     "rejected": [{"role": "assistant", "content": "Well... Paris."}]}, 3)
    assert (dpo.index, dpo.messages, dpo.reference, dpo.chosen, dpo.rejected, dpo.label) == \
        (3, prompt, "Paris.", "Paris.", "Well... Paris.", None)
    for label, reference in ((True, "Paris."), (False, "")):
        kto = heldout.to_row(Stage.KTO, {"prompt": prompt, "completion": [{"role": "assistant",
                                                                          "content": "Paris."}], "label": label})
        assert (kto.reference, kto.completion, kto.label) == (reference, "Paris.", label)

    # a tool call under a template that writes none (SmolLM2): the Hermes / Qwen form
    sft = heldout.to_row(Stage.SFT, {"messages": prompt + [CALL], "tools": WEATHER}, 0, smol_tokenizer)
    assert sft.tools == WEATHER and sft.reference_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert sft.reference == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

    class Writes:                   # a template that writes calls its own way: its text is the reference
        eos_token = "</s>"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, tools=None):
            text = "".join(f"[{m['role']}] {m['content']}"
                           + "".join(f"CALL {c['function']['name']}({c['function']['arguments']})"
                                     for c in m.get("tool_calls", [])) + "</s>" for m in messages)
            return text + ("[assistant] " if add_generation_prompt else "")

    row = heldout.to_row(Stage.SFT, {"messages": prompt + [CALL], "tools": WEATHER}, 0, Writes())
    assert row.reference == 'CALL get_weather({"city": "Paris"})'
