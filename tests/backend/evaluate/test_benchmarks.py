"""Benchmarks through lm-evaluation-harness on the tiny model: the shipped offline task (and a task folder of the
user's with relative data) runs through lm-eval for base and adapter, each variant's accuracy equals a direct
log-likelihood computation, and a built-in task whose dataset only the hub has gets one sentence."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from backend.evaluate import benchmarks
from backend.evaluate.common import EvalError
from backend.evaluate.context import load_context
from backend.serve.chat import GenerationSettings

CAPITALS = [("France", "Paris", ["Lyon", "Nice"]), ("Japan", "Tokyo", ["Osaka", "Kyoto"]),
            ("Italy", "Rome", ["Milan", "Turin"]), ("Spain", "Madrid", ["Seville", "Bilbao"])]


@pytest.fixture
def user_tasks(tmp_path, monkeypatch):
    """A folder of the user's own: a task YAML whose data_files is relative to it, named in the env var."""
    folder = tmp_path / "my-tasks" / "capitals"
    folder.mkdir(parents=True)
    with (folder / "data.jsonl").open("w") as handle:
        for country, city, others in CAPITALS:
            handle.write(json.dumps({"country": country, "choices": [*others, city], "answer": 2}) + "\n")
    (folder / "capitals.yaml").write_text(
        "task: my_capitals\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data.jsonl\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: 'The capital of {{country}} is'\n"
        "doc_to_choice: choices\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    monkeypatch.setenv(benchmarks.TASKS_ENV, str(tmp_path / "my-tasks"))
    monkeypatch.chdir(tmp_path)                        # the data must not depend on the working directory
    return folder


def _direct_accuracy(ctx, docs, context_of, limit):
    """lm-eval's multiple-choice accuracy computed by hand: the choice with the highest summed log-probability."""
    hits = []
    for doc in docs[:limit]:
        context = context_of(doc)
        totals = []
        for choice in doc["choices"]:
            whole = ctx.tokenizer.encode(context + " " + choice)
            head = ctx.tokenizer.encode(context)
            with torch.no_grad():
                logits = ctx.model(input_ids=torch.tensor([whole])).logits[0].double()
            logprobs = torch.log_softmax(logits, -1)
            totals.append(sum(logprobs[t - 1, whole[t]].item() for t in range(len(head), len(whole))))
        hits.append(1.0 if max(range(len(totals)), key=totals.__getitem__) == doc["answer"] else 0.0)
    return sum(hits) / len(hits)


def test_shipped_and_user_tasks_run_through_lm_eval_for_base_and_adapter(lora_job, user_tasks):
    assert {"studio_arith", "my_capitals"} <= set(benchmarks.list_tasks())
    ctx = load_context(lora_job, settings=GenerationSettings(max_new_tokens=4), batch_size=8)
    section = benchmarks.run(ctx, None, ["studio_arith", "my_capitals"], limit=6)
    metrics = {m.name: m for m in section.metrics}
    assert section.section == "benchmarks" and set(metrics) == {"studio_arith/acc", "my_capitals/acc",
                                                                  "my_capitals/acc_norm"}
    arith = metrics["studio_arith/acc"]
    assert arith.higher_is_better and arith.rows == 6 and "standard error base ±" in arith.help
    assert all(v is not None and 0.0 <= v <= 1.0 for m in metrics.values() for v in m.values.values())
    assert set(arith.values) == {"base", "adapter"}

    docs = [json.loads(line) for line in
            (benchmarks.TASKS_DIR / "studio_arith" / "studio_arith.jsonl").read_text().splitlines()]
    for variant in ctx.variants:
        with variant.active():
            expected = _direct_accuracy(ctx, docs, lambda d: f"Question: {d['question']}\nAnswer:", 6)
        assert arith.values[variant.key] == pytest.approx(expected), variant.key
    capitals = [{"country": c, "choices": [*o, city], "answer": 2} for c, city, o in CAPITALS]
    with ctx.variants[1].active():
        expected = _direct_accuracy(ctx, capitals, lambda d: f"The capital of {d['country']} is", 4)
    assert metrics["my_capitals/acc"].values["adapter"] == pytest.approx(expected)


@pytest.mark.slow
def test_a_task_that_needs_the_hub_or_does_not_exist_gets_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv(benchmarks.TASKS_ENV, str(tmp_path / "nowhere"))
    fake = SimpleNamespace(variants=["base", "adapter"], seed=42, batch_size=2)
    with pytest.raises(EvalError) as error:
        benchmarks.run(fake, None, ["arithmetic_1dc"], limit=2)
    message = str(error.value)
    assert message.startswith("benchmark arithmetic_1dc needs its dataset EleutherAI/arithmetic from the Hugging "
                              "Face hub, which this machine cannot reach; put the dataset in the Hugging Face cache")
    assert benchmarks.TASKS_ENV in message and "\n" not in message and ". " not in message
    with pytest.raises(EvalError, match="there is no lm-eval task named no_such_task_xyz in the studio's tasks"):
        benchmarks.run(fake, None, ["no_such_task_xyz"], limit=2)
    _, notes = benchmarks.task_folders()
    assert notes == [f"task folder {tmp_path / 'nowhere'} (from {benchmarks.TASKS_ENV}) is not a folder on this "
                     "machine, so its tasks were not looked for"]
