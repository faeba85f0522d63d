"""The conversational KTO layout (messages + label), ignored columns, placeholders, JSON error wording and why
token lengths are missing: real files on disk through validate / load_for_stage / the harness."""
from __future__ import annotations

import json

import pytest

from backend.data import DataError, load_for_stage, validate
from backend.data.formats import detect_format


def kto_row(i: int, good: bool, **extra) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": f"What is {i} + 1?"},
                         {"role": "assistant", "content": str(i + 1) if good else f"Let me think about {i}..."}],
            "label": good, **extra}


def kto_rows(n: int = 24, **extra) -> list[dict]:
    return [kto_row(i, i % 3 != 0, **extra) for i in range(n)]


def test_messages_with_a_label_are_kto_data_split_at_the_last_turn(write_jsonl):
    path = write_jsonl(kto_rows())
    assert detect_format(kto_rows())[0] == "kto_messages"
    report = validate(path)
    assert report.format == "kto_messages" and report.kind == "kto", report.to_dict()
    assert report.usable_for("kto") and report.stages["kto"].rows == 24
    assert report.label_balance == {"desirable": 16, "undesirable": 8}
    # SFT only on the good rows, and the report says so
    sft = report.stages["sft"]
    assert sft.usable and sft.rows == 16
    assert "16 rows labelled true only" in sft.reason and "8 labelled false" in sft.reason
    assert not any("label" in (g.field or "") for g in report.warnings)     # the label column is read
    rows = load_for_stage(str(path), "kto").rows
    assert rows[0] == {"prompt": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "What is 0 + 1?"}],
                       "completion": [{"role": "assistant", "content": "Let me think about 0..."}], "label": False}
    sft_rows = load_for_stage(str(path), "sft").rows
    assert len(sft_rows) == 16 and all("think" not in r["messages"][-1]["content"] for r in sft_rows)


def test_kto_messages_errors_are_row_precise(write_jsonl, tmp_path):
    rows = kto_rows()
    rows[4]["label"] = "maybe"
    rows[6]["messages"] = rows[6]["messages"][:2]          # ends with the user turn
    rows[8]["messages"] = [{"role": "assistant", "content": "hello"}]
    path = write_jsonl(rows, name="kto.jsonl")
    report = validate(path, stage="kto")
    sentences = [g.sentence("kto.jsonl") for g in report.errors]
    assert any(s.startswith("kto.jsonl, row 5, field 'label': label must be true or false") and '"maybe"' in s
               for s in sentences), sentences
    assert any(s.startswith("kto.jsonl, row 7, field 'messages[1]': the conversation ends with a user turn")
               for s in sentences), sentences
    assert any(s.startswith("kto.jsonl, row 9, field 'messages': the conversation has no user turn")
               for s in sentences), sentences
    assert not report.ok
    assert len(load_for_stage(str(path), "kto", skip_invalid=True).rows) == 21


def test_sharegpt_conversations_with_a_label_are_kto_too(write_jsonl):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}],
             "label": i % 2 == 0} for i in range(20)]
    report = validate(write_jsonl(rows), stage="kto")
    assert report.format == "kto_messages" and report.ok, report.to_dict()


def test_kto_messages_trains_through_the_harness(write_jsonl, tiny_model, workspace):
    from backend import stages
    from backend.config import JobConfig

    path = write_jsonl(kto_rows(tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}]))
    config = JobConfig.from_dict({
        "model": tiny_model, "dataset": str(path), "stage": "kto", "lora": {"r": 4, "alpha": 8},
        # 256: the tools are written into the prompt (the studio's tool format for SmolLM2's template)
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 5e-3, "max_length": 256,
                     "eval_fraction": 0.0, "save_steps": 2, "logging_steps": 1}})
    assert config.validate(cuda_available=False) == []
    run_dir = workspace / "runs" / "kto-messages"
    run_dir.mkdir(parents=True)
    results = stages.train(config, run_dir, job_id="kto-messages")
    assert results["steps"] == 2 and results["label_balance"]["undesirable"] == 8, results
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_every_ignored_column_is_a_warning_that_says_what_it_would_be_for(write_jsonl):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "tools": [{"type": "function"}], "id": i}
            for i in range(12)]
    report = validate(write_jsonl(rows, name="pc.jsonl"))
    assert report.ignored_columns == ["tools", "id"]
    by_field = {g.field: g.sentence("pc.jsonl") for g in report.warnings}
    assert "function schemas" in by_field["tools"] and "use the messages format" in by_field["tools"]
    assert "row identifier" in by_field["id"] and by_field["id"].startswith("pc.jsonl, field 'id': column 'id'")
    # a label on chat data that cannot be KTO (alpaca) is named too
    alpaca = [{"instruction": f"q{i}", "output": f"a{i}", "label": True} for i in range(12)]
    report = validate(write_jsonl(alpaca, name="alpaca.jsonl"))
    assert report.format == "alpaca" and report.ignored_columns == ["label"]
    assert "KTO" in report.warnings[0].message
    # a mapped column is read, so it is not reported
    mapped = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(12)]
    report = validate(write_jsonl(mapped, name="qa.jsonl"),
                      column_mapping={"prompt": "question", "completion": "answer"})
    assert report.ok and report.ignored_columns == [] and report.warnings == []


def test_unfilled_placeholders_are_warned_with_row_and_field(write_jsonl):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(12)]
    rows[3]["messages"][1]["content"] = "Dear {{ customer_name }}, thanks"
    rows[5]["messages"][0]["content"] = "Hello {{name}}"
    report = validate(write_jsonl(rows, name="p.jsonl"))
    sentences = [g.sentence("p.jsonl") for g in report.warnings]
    assert any(s.startswith("p.jsonl, row 4, field 'messages[1].content'") and "{{ customer_name }}" in s
               for s in sentences), sentences
    assert any(s.startswith("p.jsonl, row 6, field 'messages[0].content'") and "{{name}}" in s for s in sentences)
    assert report.ok                                    # a warning, not an error


@pytest.mark.parametrize("line, expected", [
    ('{"messages": [{"role": "user", "content": "abc}', "invalid JSON at column 43: a string starts there but its "
                                                        "closing quote is missing"),
    ('{"messages": [}', "invalid JSON at column 15: a value is expected there"),
])
def test_json_decoder_messages_are_phrased_once(write_jsonl, line, expected):
    rows = [json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) for i in range(12)] + [line]
    report = validate(write_jsonl(rows))
    message = report.errors[0].message
    assert message.startswith(expected) and " at at " not in message, message


def test_invalid_json_file_says_line_and_column_once(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"prompt": "q", "completion": "a}]')
    with pytest.raises(DataError) as info:
        load_for_stage(str(path), "sft")
    text = str(info.value)
    assert "invalid JSON at line 1 column 32: a string starts there" in text and "at at" not in text


def test_missing_token_lengths_say_the_true_reason(write_jsonl, tokenizer):
    from ui.data_tab import report_markdown

    chat = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(12)]
    report = validate(write_jsonl(chat), stage="kto", tokenizer=tokenizer)
    assert report.token_lengths is None and "cannot feed KTO" in report.token_note
    text = report_markdown(report)
    assert "need a ready model" not in text and "cannot feed KTO" in text
    # KTO data with a tokenizer: the lengths are measured, for the KTO rows
    report = validate(write_jsonl(kto_rows(), name="kto.jsonl"), stage="kto", tokenizer=tokenizer)
    assert report.token_lengths and report.token_lengths["stage"] == "kto" and report.token_note is None
    assert "Tokens per row" in report_markdown(report)
    # no tokenizer at all: that is the reason given
    assert "need a ready model" in report_markdown(validate(write_jsonl(kto_rows(), name="k2.jsonl"), stage="kto"))


def test_dpo_on_kto_data_says_it_is_kto_data_not_sft_data(write_jsonl):
    report = validate(write_jsonl(kto_rows()), stage="dpo")
    reason = report.stages["dpo"].reason
    assert "KTO data" in reason and "SFT data" not in reason and "stage kto" in reason, reason
