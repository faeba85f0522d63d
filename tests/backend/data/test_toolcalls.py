"""Tool calls and reasoning sections in chat rows: normalised to one form, checked per row, counted."""
from __future__ import annotations

import json

from backend.data import load_for_stage, validate
from backend.data.demo_tools import TOOLS, tool_call_rows
from backend.data.toolcalls import row_shape

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}


def call_row(i, name="get_weather", arguments=None, tools=(WEATHER,)):
    arguments = {"city": f"City {i}"} if arguments is None else arguments
    row = {"messages": [{"role": "user", "content": f"Weather in City {i}?"},
                        {"role": "assistant", "content": None,
                         "tool_calls": [{"id": f"c{i}", "type": "function",
                                         "function": {"name": name, "arguments": json.dumps(arguments)
                                                      if not isinstance(arguments, str) else arguments}}]},
                        {"role": "tool", "tool_call_id": f"c{i}", "content": '{"temp": 12}'},
                        {"role": "assistant", "content": "It is 12 degrees."}]}
    if tools:
        row["tools"] = list(tools)
    return row


def plain_row(i, answer=None):
    return {"messages": [{"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": answer or f"a{i}"}]}


def messages_of(report_path, stage="sft"):
    return [row["messages"] for row in load_for_stage(str(report_path), stage).rows]


def test_openai_calls_get_parsed_arguments_and_bare_schemas_are_wrapped(write_jsonl):
    rows = [call_row(i) for i in range(11)]
    rows.append({**call_row(11), "tools": [WEATHER["function"]]})        # a bare {"name", "parameters"} schema
    path = write_jsonl(rows)
    report = validate(path, stage="sft")
    assert report.ok and not report.warnings, report.to_dict()
    assert report.tool_call_rows == 12
    loaded = load_for_stage(str(path), "sft").rows
    call = loaded[3]["messages"][1]["tool_calls"][0]
    assert call == {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "City 3"}},
                    "id": "c3"}
    assert loaded[11]["tools"] == [WEATHER]


def test_sharegpt_function_call_turns_become_tool_calls(write_jsonl):
    rows = [{"conversations": [{"from": "human", "value": f"Weather in City {i}?"},
                               {"from": "function_call",
                                "value": json.dumps({"name": "get_weather", "arguments": {"city": f"City {i}"}})},
                               {"from": "observation", "value": '{"temp": 12}'},
                               {"from": "gpt", "value": "It is 12 degrees."}],
             "tools": json.dumps([WEATHER])} for i in range(12)]
    path = write_jsonl(rows)
    report = validate(path, stage="sft")
    assert report.ok and report.tool_call_rows == 12, report.to_dict()
    messages = messages_of(path)[5]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "City 5"}}


def test_each_broken_call_is_one_sentence_with_row_and_field(write_jsonl):
    rows = [call_row(i) for i in range(12)]
    rows[2] = call_row(2, name="get_wether")
    rows[4] = call_row(4, arguments='{"city": "Paris"')
    rows[6] = call_row(6, arguments={"unit": "C"})
    rows[8] = call_row(8, arguments={"city": "Oslo", "country": "NO"})
    rows[10] = call_row(10, tools=())
    report = validate(write_jsonl(rows), stage="sft")
    errors = {g.row: g for g in report.errors}
    warnings = {g.row: g for g in report.warnings}
    assert "calls 'get_wether', which the row's tools do not declare (declared: get_weather)" in errors[3].message
    assert errors[3].field == "messages[1].tool_calls"
    assert "arguments of the call to 'get_weather' are not valid JSON" in errors[5].message
    assert errors[5].field == "messages[1].tool_calls[0].arguments"
    assert "lacks its required argument 'city'" in errors[7].message
    assert "passes 'country', which its schema does not list" in warnings[9].message
    assert "the row declares no tools" in warnings[11].message
    # the broken rows are left out; the others stay usable, and nothing is lost from them
    assert report.stages["sft"].rows == 9


def test_a_sharegpt_function_call_that_is_not_json(write_jsonl):
    rows = [{"conversations": [{"from": "human", "value": f"hi {i}"},
                               {"from": "function_call", "value": "get_weather(Paris)" if i == 3 else
                                json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
                               {"from": "gpt", "value": "ok"}], "tools": [WEATHER]} for i in range(12)]
    report = validate(write_jsonl(rows), stage="sft")
    [error] = report.errors
    assert error.row == 4 and error.field == "conversations[1].value"
    assert error.message.startswith("the function_call turn is not valid JSON (Expecting value)")


def test_reasoning_sections_are_counted_and_a_mix_warns(write_jsonl):
    rows = [plain_row(i, f"<think>step {i}</think>The answer is {i}.") for i in range(8)]
    rows += [plain_row(i) for i in range(8, 11)]
    rows.append(plain_row(11, "<think>\n\n</think>Just {i}."))
    rows.append({"messages": [{"role": "user", "content": "q12"},
                              {"role": "assistant", "content": "12", "reasoning_content": "six and six"}]})
    report = validate(write_jsonl(rows), stage="sft")
    assert report.reasoning == {"with": 9, "empty": 1, "without": 3}
    warning = next(g for g in report.warnings if "<think>" in g.message)
    assert warning.message.startswith("9 of 13 rows answer with a <think> section but 3 answer without one and 1 "
                                      "with an empty one")
    assert report.ok


def test_reasoning_in_every_row_does_not_warn(write_jsonl):
    rows = [plain_row(i, f"<think>step {i}</think>{i}") for i in range(12)]
    report = validate(write_jsonl(rows), stage="sft")
    assert report.reasoning == {"with": 12, "empty": 0, "without": 0}
    assert not report.warnings and json.loads(report.to_json())["reasoning"]["with"] == 12


def test_the_demo_declares_every_function_it_calls_and_mixes_plain_answers():
    rows = tool_call_rows()
    shapes = [row_shape(row) for row in rows]
    assert sum(calls for _, calls in shapes) == 50 and len(rows) == 58
    report = validate("tool-calls-demo", stage="sft")
    assert report.ok and not report.errors and not report.warnings, report.to_dict()
    assert all(row["tools"] == TOOLS for row in rows)
