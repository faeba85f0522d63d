"""Every supported row shape is detected and normalised into the canonical rows of each stage."""
from __future__ import annotations

import json

import pytest

from backend.data import DataError, load_for_stage, validate


def chat(i, turns=1):
    messages = []
    for t in range(turns):
        messages += [{"role": "user", "content": f"question {i}.{t}"},
                     {"role": "assistant", "content": f"answer {i}.{t}"}]
    return {"messages": messages}


def test_openai_messages_multi_turn_with_tools_and_tool_role(write_jsonl):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    rows = [chat(i, turns=2) for i in range(11)]
    rows.append({"messages": [{"role": "system", "content": "Use tools."},
                              {"role": "user", "content": "1+2?"},
                              {"role": "assistant", "content": "",
                               "tool_calls": [{"type": "function", "function": {"name": "add",
                                                                                 "arguments": {"a": 1, "b": 2}}}]},
                              {"role": "tool", "content": "3"},
                              {"role": "assistant", "content": "It is 3."}],
                 "tools": tools})
    path = write_jsonl(rows)
    report = validate(path, stage="sft")
    assert report.format == "messages" and report.ok, report.to_dict()
    loaded = load_for_stage(str(path), "sft")
    assert len(loaded.rows) == 12
    assert loaded.rows[0]["messages"][2] == {"role": "user", "content": "question 0.1"}
    assert loaded.rows[-1]["tools"] == tools
    assert loaded.rows[-1]["messages"][2]["tool_calls"][0]["function"]["name"] == "add"
    assert [m["role"] for m in loaded.rows[-1]["messages"]] == ["system", "user", "assistant", "tool", "assistant"]


def test_sharegpt_roles_map_to_chat_roles(write_jsonl):
    rows = [{"conversations": [{"from": "system", "value": "Be brief."},
                               {"from": "human", "value": f"q{i}"},
                               {"from": "function_call", "value": '{"name": "f"}'},
                               {"from": "observation", "value": "42"},
                               {"from": "gpt", "value": f"a{i}"}]} for i in range(12)]
    path = write_jsonl(rows)
    assert validate(path).format == "sharegpt"
    messages = load_for_stage(str(path), "sft").rows[3]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert messages[1]["content"] == "q3" and messages[-1]["content"] == "a3"


def test_alpaca_with_input_system_and_history(write_jsonl):
    rows = [{"instruction": f"Summarise {i}", "input": "some text" if i % 2 else "", "output": f"summary {i}",
             "system": "You summarise.", "history": [["hi", "hello"]]} for i in range(12)]
    path = write_jsonl(rows)
    assert validate(path).format == "alpaca"
    rows = load_for_stage(str(path), "sft").rows
    assert rows[1]["messages"] == [
        {"role": "system", "content": "You summarise."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Summarise 1\nsome text"}, {"role": "assistant", "content": "summary 1"}]
    assert rows[0]["messages"][3]["content"] == "Summarise 0"


@pytest.mark.parametrize("as_messages", [False, True])
def test_prompt_completion_strings_or_message_lists(write_jsonl, as_messages):
    def row(i):
        if as_messages:
            return {"prompt": [{"role": "user", "content": f"p{i}"}],
                    "completion": [{"role": "assistant", "content": f"c{i}"}]}
        return {"prompt": f"p{i}", "completion": f"c{i}"}
    path = write_jsonl([row(i) for i in range(12)])
    assert validate(path).format == "prompt_completion"
    assert load_for_stage(str(path), "sft").rows[2] == {"messages": [{"role": "user", "content": "p2"},
                                                                    {"role": "assistant", "content": "c2"}]}


def test_preference_strings_give_trl_conversational_rows(write_jsonl):
    path = write_jsonl([{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)])
    report = validate(path)
    assert report.format == "preference"
    assert report.stages["dpo"].usable and report.stages["orpo"].usable and report.stages["sft"].usable
    row = load_for_stage(str(path), "dpo").rows[0]
    assert row == {"prompt": [{"role": "user", "content": "q0"}],
                   "chosen": [{"role": "assistant", "content": "good 0"}],
                   "rejected": [{"role": "assistant", "content": "bad 0"}]}
    assert load_for_stage(str(path), "orpo").rows[0] == row
    assert load_for_stage(str(path), "sft").rows[0]["messages"][-1]["content"] == "good 0"
    kto = load_for_stage(str(path), "kto").rows
    assert len(kto) == 24 and kto[0]["label"] is True and kto[1]["label"] is False


def test_preference_message_lists_with_repeated_or_implicit_prompt(write_jsonl):
    prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    explicit = [{"prompt": prompt, "chosen": prompt + [{"role": "assistant", "content": f"good {i}"}],
                 "rejected": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(12)]
    implicit = [{"chosen": prompt + [{"role": "assistant", "content": f"good {i}"}],
                 "rejected": prompt + [{"role": "assistant", "content": f"bad {i}"}]} for i in range(12)]
    for rows in (explicit, implicit):
        path = write_jsonl(rows, name=f"pref{len(rows[0])}.jsonl")
        row = load_for_stage(str(path), "dpo").rows[4]
        assert row["prompt"] == prompt
        assert row["chosen"] == [{"role": "assistant", "content": "good 4"}]
        assert row["rejected"] == [{"role": "assistant", "content": "bad 4"}]


def test_sharegpt_preference_pair(write_jsonl):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}],
             "chosen": {"from": "gpt", "value": f"good {i}"},
             "rejected": {"from": "gpt", "value": f"bad {i}"}} for i in range(12)]
    path = write_jsonl(rows)
    assert validate(path).format == "sharegpt_preference"
    assert load_for_stage(str(path), "dpo").rows[9] == {
        "prompt": [{"role": "user", "content": "q9"}], "chosen": [{"role": "assistant", "content": "good 9"}],
        "rejected": [{"role": "assistant", "content": "bad 9"}]}


@pytest.mark.parametrize("true_value,false_value", [(True, False), (1, 0), ("true", "false"), ("1", "0"),
                                                    ("thumbs_up", "thumbs_down")])
def test_kto_labels_in_every_style(write_jsonl, true_value, false_value):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": true_value if i % 2 else false_value}
            for i in range(24)]
    path = write_jsonl(rows)
    report = validate(path, stage="kto")
    assert report.format == "kto" and report.ok, report.to_dict()["errors"]
    assert report.label_balance == {"desirable": 12, "undesirable": 12}
    loaded = load_for_stage(str(path), "kto").rows
    assert [r["label"] for r in loaded[:2]] == [False, True]
    assert loaded[1]["completion"] == [{"role": "assistant", "content": "a1"}]
    # SFT imitates only the desirable answers
    assert len(load_for_stage(str(path), "sft").rows) == 12


def test_sft_data_for_dpo_says_why_before_anything_loads(write_jsonl):
    path = write_jsonl([chat(i) for i in range(20)])
    with pytest.raises(DataError) as info:
        load_for_stage(str(path), "dpo")
    message = str(info.value)
    assert "chosen" in message and "rejected" in message and "single answer" in message
    report = validate(path, stage="dpo")
    assert not report.ok and report.stages["sft"].usable
    assert any("DPO needs a chosen and a rejected answer" in e.message for e in report.errors)
    with pytest.raises(DataError, match="labelled"):
        load_for_stage(str(path), "kto")


def test_undetectable_columns_need_a_mapping(write_jsonl):
    path = write_jsonl([{"question": f"q{i}", "answer": f"a{i}"} for i in range(12)])
    report = validate(path)
    assert report.format is None and not report.ok
    assert "['answer', 'question']" in report.errors[0].message and "column mapping" in report.errors[0].message
    mapping = {"prompt": "question", "completion": "answer"}
    report = validate(path, column_mapping=mapping)
    assert report.format == "prompt_completion" and report.ok
    rows = load_for_stage(str(path), "sft", column_mapping=mapping).rows
    assert rows[0]["messages"][1] == {"role": "assistant", "content": "a0"}


def test_explicit_format_overrides_detection(write_jsonl):
    path = write_jsonl([{"instruction": f"q{i}", "output": f"a{i}", "prompt": "x", "completion": "y"}
                        for i in range(12)])
    rows = load_for_stage(str(path), "sft", format_name="prompt_completion").rows
    assert rows[0]["messages"][0]["content"] == "x"
    assert load_for_stage(str(path), "sft").rows[0]["messages"][0]["content"] == "q0"


def test_demo_dataset_loads_by_name():
    loaded = load_for_stage("identity-demo", "sft")
    assert loaded.id == "identity-demo" and len(loaded.rows) >= 50 and len(loaded.content_hash) == 64
    assert all(r["messages"][-1]["role"] == "assistant" for r in loaded.rows)


def test_unknown_spec_is_one_sentence():
    with pytest.raises(DataError, match="not a demo name"):
        load_for_stage("no-such-dataset", "sft")
