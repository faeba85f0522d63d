"""Uploads become content-addressed datasets under datasets/<id>/; demos are registered at first start."""
from __future__ import annotations

import json

import pytest

from backend import workspace
from backend.data import (DataError, dataset_info, ensure_demo_datasets, list_datasets, load_for_stage,
                          register_upload, validate)


def test_upload_is_stored_normalised_with_its_report(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(12)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset_id = register_upload(path)
    folder = workspace.datasets_dir() / dataset_id
    stored = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert stored[0] == {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]}
    report = json.loads((folder / "report.json").read_text())
    assert report["format"] == "sharegpt" and report["rows"] == 12
    info = dataset_info(dataset_id)
    assert info["name"] == "chats.jsonl" and info["format"] == "sharegpt" and info["report"]["usable_rows"] == 12
    # the same content under another name is the same dataset
    copy = tmp_path / "again.jsonl"
    copy.write_bytes(path.read_bytes())
    assert register_upload(copy) == dataset_id
    other = tmp_path / "other.jsonl"
    other.write_text(path.read_text() + json.dumps(rows[0]).replace("q0", "new") + "\n")
    assert register_upload(other) != dataset_id
    loaded = load_for_stage(dataset_id, "sft")
    assert loaded.id == dataset_id and len(loaded.rows) == 12
    assert validate(dataset_id, stage="sft").ok


def test_upload_with_invalid_rows_is_kept_but_blocks_until_skipped(tmp_path):
    path = tmp_path / "some-bad.jsonl"
    good = [json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(12)]
    path.write_text("\n".join(good + ['{"prompt": "q", "completion": ""}']) + "\n")
    dataset_id = register_upload(path)
    assert dataset_info(dataset_id)["invalid_rows"] == 1
    with pytest.raises(DataError, match="1 rows with errors"):
        load_for_stage(dataset_id, "sft")
    assert len(load_for_stage(dataset_id, "sft", skip_invalid=True).rows) == 12


def test_unusable_upload_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x80\x04junk")
    with pytest.raises(DataError, match="refused"):
        register_upload(path)
    assert list_datasets() == []


def test_demo_datasets_are_registered_at_first_start():
    from backend.data.demo import DEMO_DATASETS
    from backend.data.formats import Kind

    assert ensure_demo_datasets() == list(DEMO_DATASETS)
    demos = list_datasets()
    assert sorted(d["id"] for d in demos) == sorted(DEMO_DATASETS)
    for demo in demos:   # every demo is usable for the stage its shape is made for
        assert demo["demo"] and demo["stages"][Kind(demo["kind"]).natural_stage], demo
    assert ensure_demo_datasets() == list(DEMO_DATASETS)     # idempotent
    assert len(list_datasets()) == len(DEMO_DATASETS)
    assert dataset_info("identity-demo")["report"]["format"] == "messages"


def test_a_demo_whose_generator_changed_is_registered_again(monkeypatch):
    """A new studio version may ship a different demo: its rows and report follow the new data, not the old."""
    from backend.data import demo

    ensure_demo_datasets(["colour-demo"])
    before = dataset_info("colour-demo")["rows"]
    monkeypatch.setitem(demo.DEMO_DATASETS, "colour-demo", lambda: demo.colour_rows()[:20])
    ensure_demo_datasets(["colour-demo"])
    assert before > 20 and dataset_info("colour-demo")["rows"] == 20
