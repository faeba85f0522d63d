"""A dataset saved under a name is used by that name everywhere an id is: resolve, validate, load_for_stage,
preflight, the job summary; names are unique, with one sentence on a clash."""
from __future__ import annotations

import json

import pytest

from backend.data import (DataError, dataset_info, delete_dataset, display_name, list_datasets, load_for_stage,
                          register_upload, resolve, validate)


def chats(tmp_path, name="chats.jsonl", n=12, tag="a"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"{tag}{i}"}]}) + "\n"
                            for i in range(n)))
    return path


def test_a_saved_name_resolves_like_the_id(tmp_path):
    dataset_id = register_upload(chats(tmp_path), name="support-chats")
    assert resolve("support-chats")[0] == dataset_id
    assert validate("support-chats", stage="sft").ok
    loaded = load_for_stage("support-chats", "sft")
    assert loaded.id == dataset_id and len(loaded.rows) == 12
    assert dataset_info("support-chats")["id"] == dataset_id
    assert display_name(dataset_id) == "support-chats" and display_name("identity-demo") == "identity-demo"
    meta = next(m for m in list_datasets() if m["id"] == dataset_id)
    assert meta["named"] is True and meta["name"] == "support-chats"


def test_a_name_clash_is_one_sentence_and_nothing_is_stored(tmp_path):
    first = register_upload(chats(tmp_path), name="mine")
    with pytest.raises(DataError) as info:
        register_upload(chats(tmp_path, "other.jsonl", tag="b"), name="mine")
    message = str(info.value)
    assert message.startswith("dataset name 'mine' is already used by " + first) and "pick another name" in message
    assert "\n" not in message and len(list_datasets()) == 1
    with pytest.raises(DataError, match="reserved"):
        register_upload(chats(tmp_path, "x.jsonl", tag="c"), name="identity-demo")
    with pytest.raises(DataError, match="not valid"):
        register_upload(chats(tmp_path, "y.jsonl", tag="d"), name="../escape")
    # the same content under the same name is the same dataset; unnamed content can be named later
    assert register_upload(chats(tmp_path), name="mine") == first
    unnamed = register_upload(chats(tmp_path, "z.jsonl", tag="e"))
    assert register_upload(chats(tmp_path, "z.jsonl", tag="e"), name="later") == unnamed
    assert resolve("later")[0] == unnamed
    with pytest.raises(DataError, match="already saved as dataset 'later'"):
        register_upload(chats(tmp_path, "z.jsonl", tag="e"), name="renamed")
    delete_dataset("later")
    with pytest.raises(DataError, match="saved dataset name"):
        resolve("later")


def test_preflight_and_the_job_summary_use_the_name(tmp_path, tiny_model):
    from backend import jobs
    from backend.config import JobConfig
    from backend.jobs import preflight
    from backend.jobs.summary import summarize

    dataset_id = register_upload(chats(tmp_path), name="named-set")
    config = JobConfig.from_dict({"model": tiny_model, "dataset": "named-set"})
    assert preflight.problems(config) == []
    problems = preflight.problems(JobConfig.from_dict({"model": tiny_model, "dataset": "no-such-name"}))
    assert problems and problems[0].startswith("dataset: dataset 'no-such-name' is not a demo name")
    # a job that names the dataset by id still shows its name
    job = jobs.create(JobConfig.from_dict({"model": tiny_model, "dataset": dataset_id}))
    summary = summarize(job)
    assert summary.dataset == dataset_id and summary.dataset_name == "named-set"
    assert summary.to_dict()["dataset_name"] == "named-set"
