"""Format checks: tool calls read in the forms templates write them and checked against the declared functions,
JSON and <think> sections, on hand-made answers; the section reuses the task section's answers, returns None
when the data asks for no check, and on the tiny model passes each row's tools to the chat template."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from backend.evaluate import formats, heldout
from backend.evaluate.common import Progress, RowResult, SectionResult
from backend.evaluate.heldout import HeldOutRow
from backend.serve.chat import GenerationSettings

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}},
    {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_tool_calls_are_read_in_the_forms_templates_write_them():
    forms = [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',      # Hermes / Qwen
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',                                # Llama 3.1
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',                  # Mistral
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        'Let me check. {"name": "get_weather", "arguments": {"city": "Paris"}}',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',                    # cut off
    ]
    for text in forms:
        assert formats.parse_tool_calls(text) == ([PARIS], ""), text
        assert formats.check_tool_calls(text, WEATHER) == ([PARIS], ""), text
    two = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call><tool_call>' + json.dumps(PARIS) + '</tool_call>'
    assert [c["name"] for c in formats.check_tool_calls(two, WEATHER)[0]] == ["get_time", "get_weather"]
    assert formats.parse_tool_calls("It is sunny in Paris.") == ([], "no tool call found")
    assert formats.parse_tool_calls("<tool_call>{oops</tool_call>")[1].startswith("a <tool_call> block is not JSON")
    assert formats.check_tool_calls('{"name": "book_flight", "arguments": {}}', WEATHER)[1] == \
        "calls 'book_flight', which the row does not declare"
    assert formats.check_tool_calls('{"name": "get_weather", "arguments": {"unit": "C"}}', WEATHER)[1] == \
        "'get_weather' misses required argument(s) city"
    assert formats.check_tool_calls('{"name": "get_weather", "arguments": "Paris"}', WEATHER)[1] == \
        "the arguments of 'get_weather' are not a JSON object"


def test_json_and_think_checks():
    assert formats.parse_json('```json\n{"a": [1, 2]}\n```') == ({"a": [1, 2]}, "")
    assert formats.parse_json("[1, 2]")[0] == [1, 2]
    assert formats.parse_json("42")[1] == "JSON int, not an object or array"
    assert formats.parse_json('{"a": 1')[1].startswith("not JSON")
    assert formats.check_think("<think>add 2 and 3</think>5") == ""
    assert formats.check_think("<think>a</think>b<think>c</think>d") == ""
    assert formats.check_think("5") == "no <think> section"
    assert formats.check_think("<think> \n</think>5") == "an empty <think> section"
    assert formats.check_think("<think>still thinking") == "a <think> section is never closed"
    assert formats.check_think("a</think>b") == "a </think> closes nothing"
    assert formats.check_think("<think>a<think>b</think></think>") == "a <think> opens inside another"
    assert formats.check_think("add 2 and 3</think>5", opened=True) == ""          # the prompt opened it


def rows_and_answers():
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    rows = [HeldOutRow(0, ask, formats_reference(PARIS), tools=WEATHER, reference_calls=[PARIS]),
            HeldOutRow(1, ask, formats_reference(PARIS), tools=WEATHER, reference_calls=[PARIS]),
            HeldOutRow(2, [{"role": "user", "content": "Ann, 31, as JSON"}], '{"name": "Ann", "age": 31}'),
            HeldOutRow(3, [{"role": "user", "content": "2 + 3?"}], "<think>2 plus 3</think>5"),
            HeldOutRow(4, [{"role": "user", "content": "Hi"}], "Hello!"),                   # no check
            HeldOutRow(5, ask, "It is sunny.", tools=WEATHER)]                                # no call expected
    answers = {"base": ["Paris is nice.", '{"name": "book_flight", "arguments": {}}', "Ann is 31.", "5",
                        "Hey", "Sunny."],
               "adapter": [formats_reference(PARIS), '{"name": "get_weather", "arguments": {}}',
                           '{"name": "Ann", "age": 31}', "<think>2 + 3 = 5</think>5", "Hello!", "Sunny."]}
    task = SectionResult("task", rows=[RowResult("task", i + 1, row.prompt_text, row.reference,
                                                 answers={k: v[i] for k, v in answers.items()})
                                       for i, row in enumerate(rows)])
    return rows, task


def formats_reference(call: dict) -> str:
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def test_section_reuses_the_task_answers_and_scores_each_check(smol_tokenizer, monkeypatch):
    import backend.evaluate.generate as generate

    monkeypatch.setattr(generate, "generate", lambda *a, **k: pytest.fail("the formats section generated"))
    ctx = SimpleNamespace(variants=[SimpleNamespace(key="base"), SimpleNamespace(key="adapter")],
                          tokenizer=smol_tokenizer, settings=GenerationSettings())
    rows, task = rows_and_answers()
    result = formats.run(ctx, Progress(), task, rows)
    values = {m.name: (m.values, m.rows, m.higher_is_better) for m in result.metrics}
    assert values == {"tool_call_valid": ({"base": 0.0, "adapter": 0.5}, 2, True),
                      "tool_call_name": ({"base": 0.0, "adapter": 1.0}, 2, True),
                      "json_valid": ({"base": 0.0, "adapter": 1.0}, 1, True),
                      "think_balanced": ({"base": 0.0, "adapter": 1.0}, 1, True)}
    by_row = {r.row: r for r in result.rows}
    assert sorted(by_row) == [1, 2, 3, 4]                    # rows 5 and 6 call for no check
    assert by_row[1].note == "base: no tool call found"
    assert by_row[2].note == ("base: calls 'book_flight', which the row does not declare; "
                              "adapter: 'get_weather' misses required argument(s) city")
    assert by_row[4].scores == {"base": {"think_balanced": 0.0}, "adapter": {"think_balanced": 1.0}}
    assert result.notes == ["1 rows declare tools but their reference calls none; their answers are not "
                            "checked for a call"]
    assert formats.run(ctx, Progress(), task, rows[4:5]) is None


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>\n"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}\n</tool_call>{% endfor %}"
    "{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_tiny_model_rows_with_tools_json_and_think(tiny_model_dir, workspace, tmp_path):
    import shutil

    from backend import jobs, models
    from backend.config import JobConfig
    from backend.evaluate.context import load_context
    from backend.evaluate.generate import prompt_ids
    from backend.jobs import runner

    cities = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito", "Seoul", "Perth"]
    data = [{"messages": [{"role": "user", "content": f"Weather in {city}?"},
                          {"role": "assistant", "content": "", "tool_calls": [
                              {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}]}],
             "tools": WEATHER} for city in cities]
    data += [{"messages": [{"role": "user", "content": f"{name}, {age}, as JSON"},
                           {"role": "assistant", "content": json.dumps({"name": name, "age": age})}]}
             for name, age in (("Ann", 31), ("Bo", 40), ("Cy", 22), ("Di", 57), ("Ed", 19), ("Fay", 66))]
    data += [{"messages": [{"role": "user", "content": f"{a} + {b}?"},
                           {"role": "assistant", "content": f"<think>{a} plus {b}</think>{a + b}"}]}
             for a, b in ((1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4))]
    path = tmp_path / "formats.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data))
    folder = shutil.copytree(tiny_model_dir, tmp_path / "tiny-tools")     # the tiny model, a template with tools
    (folder / "chat_template.jinja").write_text(TOOL_TEMPLATE)
    model = models.import_model(folder, name="tiny-tools").name
    config = JobConfig.from_dict({
        "model": model, "dataset": str(path),
        "lora": {"r": 4, "alpha": 8}, "training": {"max_steps": 1, "batch_size": 2, "max_length": 256,
                                                   "eval_fraction": 0.5, "save_steps": 50}})
    job = jobs.create(config, status="running")
    assert runner.run_job(job.id).status == "completed"
    ctx = load_context(job.id, settings=GenerationSettings(max_new_tokens=4), batch_size=8)
    rows = heldout.load_rows(ctx)
    tool_row = next(row for row in rows if row.tools)
    assert tool_row.reference.startswith('<tool_call>\n{"name": "get_weather"')      # as the template writes it
    with_tools = ctx.tokenizer.decode(prompt_ids(ctx, tool_row.messages, tool_row.tools))
    assert "get_weather" in with_tools and "get_weather" not in ctx.tokenizer.decode(prompt_ids(ctx, tool_row.messages))

    progress = Progress()
    result = formats.run(ctx, progress, None, rows)          # no task section: generates the rows it checks
    checked = formats.plan(rows)
    assert all(checked.values()) and progress.done == progress.total - 1
    assert {m.name for m in result.metrics} == {"tool_call_valid", "tool_call_name", "json_valid", "think_balanced"}
    for metric in result.metrics:
        assert set(metric.values) == {"base", "adapter"} and all(0 <= v <= 1 for v in metric.values.values())
    assert len(result.rows) == sum(len(v) for v in checked.values())
