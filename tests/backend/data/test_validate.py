"""Row checks, grouping, stage usability and the JSON form of the report."""
from __future__ import annotations

import json

import pytest

from backend.data import DataError, ValidationReport, load_for_stage, validate


def chat(i, *extra):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"},
                         *extra]}


def errors(report):
    return {(e.field, e.message): e for e in report.errors}


def test_message_problems_each_name_row_and_field(write_jsonl):
    good = [chat(i) for i in range(12)]
    bad = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},                     # line 13
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},     # 14
        {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]},       # 15
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},      # 16
        chat(99, {"role": "user", "content": "and then?"}),                                           # 17
        {"messages": [{"role": "user", "content": "only a question"}]},                               # 18
        {"messages": "not a list"},                                                                   # 19
    ]
    report = validate(write_jsonl(good + bad), stage="sft")
    found = {(e.row, e.field): e.message for e in report.errors}
    assert found[(13, "messages[1].content")].startswith("content is missing")
    assert found[(14, "messages[0].content")].startswith("the user message is empty")
    assert found[(15, "messages[0].content")].startswith("content must be a string, got a number")
    assert found[(16, "messages[0].role")].startswith("unknown role 'bot'")
    assert "ends with a user turn, not an assistant turn" in found[(17, "messages[2]")]
    assert "no assistant turn" in found[(18, "messages")]
    assert "expected a list of messages" in found[(19, "messages")]
    assert report.rows == 19 and not report.ok
    assert report.stages["sft"].rows == 12
    # every message is one sentence naming where and how to fix
    for group in report.errors:
        sentence = group.sentence("data.jsonl")
        assert sentence.startswith(f"data.jsonl, row {group.row}") and "\n" not in sentence


def test_identical_errors_are_grouped_with_count_and_first_rows(write_jsonl):
    rows = [chat(i) for i in range(12)] + [{"messages": [{"role": "human", "content": "x"},
                                                         {"role": "assistant", "content": "y"}]}] * 0
    rows += [{"messages": [{"role": "human", "content": f"x{i}"}, {"role": "assistant", "content": "y"}]}
             for i in range(40)]
    report = validate(write_jsonl(rows))
    assert len(report.errors) == 1
    group = report.errors[0]
    assert group.count == 40 and group.rows == [13, 14, 15, 16, 17] and group.row == 13
    assert "and 39 more like it" in group.sentence()
    data = json.loads(report.to_json())
    assert data["errors"][0]["count"] == 40 and data["errors"][0]["row"] == 13


def test_preference_checks(write_jsonl):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
    rows.append({"prompt": "q", "chosen": "same", "rejected": "same"})                     # 13
    rows.append({"prompt": "q", "chosen": "", "rejected": "bad"})                          # 14
    rows.append({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "bad"})   # 15
    path = write_jsonl(rows)
    report = validate(path, stage="dpo")
    found = {(e.row, e.field): e.message for e in report.errors}
    assert "chosen and rejected are identical" in found[(13, "rejected")]
    assert "chosen is empty" in found[(14, "chosen")]
    assert "must end with an assistant message" in found[(15, "chosen")]
    assert not report.ok
    # identical answers do not matter for SFT on the chosen answers
    assert validate(path, stage="sft").stages["sft"].rows == 13


def test_kto_non_boolean_label(write_jsonl):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2} for i in range(12)]
    rows += [{"prompt": "q", "completion": "a", "label": "maybe"}, {"prompt": "q", "completion": "a", "label": 2}]
    report = validate(write_jsonl(rows), stage="kto")
    found = {e.row: e.message for e in report.errors}
    assert found[13] == 'label must be true or false (or 1/0), got "maybe"; mark the answer good (true) or bad (false)'
    assert found[14] == "label must be true or false (or 1/0), got 2; mark the answer good (true) or bad (false)"
    assert report.errors[0].field == "label"


def test_exact_duplicates_are_warnings(write_jsonl):
    rows = [chat(i) for i in range(12)] + [chat(3), chat(3), chat(5)]
    report = validate(write_jsonl(rows))
    assert report.ok
    (dup,) = report.warnings
    assert "exact duplicate" in dup.message and dup.rows == [13, 14, 15] and dup.count == 3


def test_too_small_and_eval_split(write_jsonl):
    small = write_jsonl([chat(i) for i in range(6)], name="small.jsonl")
    report = validate(small, stage="sft")
    assert not report.ok and "only 6 usable rows" in report.errors[0].message
    with pytest.raises(DataError, match="only 6 usable rows"):
        load_for_stage(str(small), "sft")
    ten = write_jsonl([chat(i) for i in range(10)], name="ten.jsonl")
    assert validate(ten, stage="sft", eval_fraction=0).ok
    report = validate(ten, stage="sft", eval_fraction=0.2)
    assert "leaves 8 to train on" in report.errors[0].message and report.split == {"stage": "sft", "train": 8,
                                                                                    "eval": 2}
    twenty = write_jsonl([chat(i) for i in range(20)], name="twenty.jsonl")
    assert "eval split would be empty" in validate(twenty, stage="sft", eval_fraction=0.01).errors[0].message
    assert validate(twenty, stage="sft", eval_fraction=0.1).split == {"stage": "sft", "train": 18, "eval": 2}


def test_errors_block_unless_invalid_rows_are_skipped(write_jsonl):
    path = write_jsonl([chat(i) for i in range(12)] + ["{broken"])
    with pytest.raises(DataError) as info:
        load_for_stage(str(path), "sft")
    assert "row 13" in str(info.value) and "invalid JSON" in str(info.value)
    loaded = load_for_stage(str(path), "sft", skip_invalid=True)
    assert len(loaded.rows) == 12 and loaded.skipped_rows == 1


def test_report_round_trips_through_json(write_jsonl):
    report = validate(write_jsonl([chat(i) for i in range(12)] + ["{"]), stage="sft")
    data = json.loads(report.to_json())
    for key in ("format", "rows", "usable_rows", "stages", "errors", "warnings", "token_lengths",
                "over_max_length"):
        assert key in data
    assert set(data["errors"][0]) >= {"row", "field", "message", "count"}
    again = ValidationReport.from_dict(data)
    assert again.to_dict() == report.to_dict()
