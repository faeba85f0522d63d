"""Playground on the tiny model: the base column is the untouched base, columns share one conversation and
settings, the merge check runs, two jobs compare on one base, batch compare and the eval split."""
from __future__ import annotations

import csv

import pytest
import torch

from backend import models
from backend.models import adapters
from backend.serve import playground
from backend.serve.chat import GenerationSettings
from tests.backend.conftest import finished_job

QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(autouse=True)
def fresh_cache():
    playground.close_session()
    yield
    playground.close_session()


def test_base_column_is_the_untouched_base_and_columns_stream_with_stats(lora_job):
    from transformers import AutoModelForCausalLM

    session = playground.open_session(lora_job)
    assert [c.key for c in session.columns] == ["base", "adapter", "merged"]
    assert session.column("base").model is session.column("adapter").model      # no second copy of the base
    settings = GenerationSettings(max_new_tokens=10)
    steps = list(session.stream("base", QUESTION, settings))
    assert len(steps) >= 2 and steps[-1].done and not steps[0].done          # it streamed
    final = steps[-1]
    assert final.tokens == 10 and final.first_token_s is not None and final.tokens_per_second > 0

    source = adapters.adapter_source(lora_job)
    untouched = AutoModelForCausalLM.from_pretrained(models.resolve(source.config.model).path)
    tokenizer = session.tokenizer
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = untouched.generate(**ids, do_sample=False, max_new_tokens=10)
        with session.column("base").model.disable_adapter():
            base_logits = session.column("base").model(**ids).logits
        tuned_logits = session.column("adapter").model(**ids).logits
        plain_logits = untouched(**ids).logits
    assert final.text == tokenizer.decode(expected[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert torch.allclose(base_logits, plain_logits, atol=1e-5)
    assert not torch.allclose(tuned_logits, plain_logits, atol=1e-3)            # the adapter is really on


def test_merge_check_and_all_columns_answer(lora_job):
    session = playground.open_session(lora_job)
    check = session.check
    assert check.ok and check.max_logit_diff < 1e-4 and all(check.answers_match), check.summary()
    answers = session.answer_all(QUESTION, GenerationSettings(max_new_tokens=8))
    assert answers["adapter"].text == answers["merged"].text
    assert playground.open_session(lora_job) is session                        # cached while unchanged


def test_sampling_is_repeatable_with_the_same_seed(lora_job):
    session = playground.open_session(lora_job, verify=False)
    settings = GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    first = session.answer_all(QUESTION, settings)
    again = session.answer_all(QUESTION, settings)
    assert {k: v.text for k, v in first.items()} == {k: v.text for k, v in again.items()}
    assert GenerationSettings(temperature=5).problems() == ["temperature: 5 is outside 0.0 to 2.0"]


def test_two_jobs_side_by_side_on_one_base(tiny_model):
    job_a = finished_job(tiny_model, seed=1)
    job_b = finished_job(tiny_model, seed=2, lr=5e-2)
    session = playground.open_session(job_a, job_b)
    assert [c.key for c in session.columns] == ["base", "a", "b"] and session.check is None
    assert session.column("a").model is session.column("b").model
    tokenizer = session.tokenizer
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model = session.column("a").model
    with torch.no_grad():
        model.set_adapter("a")
        logits_a = model(**ids).logits
        model.set_adapter("b")
        logits_b = model(**ids).logits
    assert not torch.allclose(logits_a, logits_b, atol=1e-3)
    answers = session.answer_all(QUESTION, GenerationSettings(max_new_tokens=4))
    assert set(answers) == {"base", "a", "b"}


def test_batch_compare_with_eval_split_and_csv(lora_job, workspace):
    import re

    from backend import jobs

    prompts = playground.eval_prompts(lora_job)
    # the same number of rows as the stage's own split (its log line: "dataset X: N rows, T train, E eval")
    logged = re.search(r"(\d+) train, (\d+) eval", (jobs.get(lora_job).run_dir / "train.log").read_text())
    assert logged and len(prompts) == int(logged.group(2)) > 0
    assert all(p.reference and p.messages[-1]["role"] == "user" for p in prompts)
    typed = playground.prompts_from_text("Who are you?\n\n  Say hi.  \n")
    assert [p.text for p in typed] == ["Who are you?", "Say hi."]
    session = playground.open_session(lora_job, verify=False)
    seen = []
    rows = playground.batch_compare(session, prompts[:2] + typed[:1], GenerationSettings(max_new_tokens=4),
                                    progress=lambda f, text: seen.append(f))
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "reference", "base", "adapter", "merged"}
    assert rows[0]["reference"] == prompts[0].reference and rows[2]["reference"] == ""
    assert seen[-1] == 1.0
    path = playground.write_batch_csv(rows, lora_job)
    assert path.parent == workspace / "exports" / lora_job
    assert list(csv.DictReader(path.open()))[2]["prompt"] == "Who are you?"


def test_prompt_files_and_their_errors(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "Hi", "reference": "Hello"}\n'
                     '{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}\n')
    prompts = playground.prompts_from_file(jsonl)
    assert [(p.text, p.reference) for p in prompts] == [("Hi", "Hello"), ("Q", "A")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt"}\n')
    with pytest.raises(ValueError, match="bad.jsonl row 2: no `prompt` or `messages` field"):
        playground.prompts_from_file(bad)
    with pytest.raises(ValueError, match="no prompts to compare"):
        playground.batch_compare(None, [])


def test_closing_a_stream_early_stops_generation_before_releasing_the_model(lora_job):
    session = playground.open_session(lora_job, verify=False)
    stream = session.stream("adapter", QUESTION, GenerationSettings(max_new_tokens=400))
    first = next(stream)
    stream.close()                                    # e.g. the browser tab was closed
    assert not first.done and not session.lock.locked()
    import threading
    assert not [t for t in threading.enumerate() if t.daemon and t.name.startswith("Thread") and t.is_alive()
                and "generate" in getattr(t, "_target", lambda: None).__qualname__]
