"""Playground tab handlers, without a browser, on a tiny model trained for 2 steps: job choices, settings,
three streamed columns with their own histories, regenerate / clear, merge check, compare mode, batch compare."""
from __future__ import annotations

import csv
import json

import pytest

from backend import jobs
from backend.serve import playground
from backend.jobs import runner
from backend.serve.chat import GenerationSettings
from backend.config import JobConfig
from ui import common
from ui import playground_tab as pg
from ui.common import UserError, readable


def finished_job(model: str, **training) -> str:
    config = JobConfig.from_dict({
        "model": model, "dataset": "identity-demo", "stage": "sft", "lora": {"r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 2, "max_length": 128, "eval_fraction": 0.1, "save_steps": 2,
                     "logging_steps": 1, "learning_rate": 5e-3, **training}})
    job = jobs.create(config, status="running")  # as claimed by a worker
    done = runner.run_job(job.id)
    assert done.status == "completed", done.reason
    return job.id


@pytest.fixture
def job_id(tiny_model):
    yield finished_job(tiny_model)
    playground.close_session()


def defaults() -> list:
    return [getattr(GenerationSettings(), name) for name in pg.SETTING_NAMES]


def short() -> GenerationSettings:
    return GenerationSettings(max_new_tokens=6)


def test_only_jobs_with_an_adapter_are_offered(job_id, tiny_model):
    queued = jobs.create(JobConfig.from_dict({"model": tiny_model}))
    choices = common.usable_job_choices()
    assert [value for _, value in choices] == [job_id]
    assert "completed" in choices[0][0] and "final adapter" in choices[0][0]
    assert common.pick(choices, "gone") == job_id and common.pick(choices, None, 1) == job_id
    assert queued.id not in [value for _, value in choices]


def test_settings_from_controls_checks_every_limit():
    settings = pg.settings_from(*defaults())
    assert settings == GenerationSettings()
    assert settings.temperature == 0.0      # greedy by default
    values = defaults()
    values[pg.SETTING_NAMES.index("temperature")] = 5.0
    values[pg.SETTING_NAMES.index("max_new_tokens")] = 0
    with pytest.raises(UserError) as error:
        pg.settings_from(*values)
    assert "temperature: 5.0 is outside 0.0 to 2.0" in str(error.value)
    assert "max new tokens: 0 is outside 1 to 4096" in str(error.value)
    values = defaults()
    values[pg.SETTING_NAMES.index("seed")] = None
    with pytest.raises(UserError, match="seed: give a value"):
        pg.settings_from(*values)


def test_three_columns_stream_with_their_own_histories_then_regenerate_and_clear(job_id):
    session = pg.open_for(job_id)
    assert [c.key for c in session.columns] == ["base", "adapter", "merged"]
    steps = list(pg.answer_turn(session, pg.new_histories(), short(), "Who are you?"))
    assert len(steps) > 3                               # streamed: many updates, not one per column
    histories, lines = steps[-1]
    for history, line in zip(histories, lines):
        assert [m["role"] for m in history] == ["user", "assistant"] and history[1]["content"]
        assert "tokens" in line and "chars" in line and not line.startswith("⏳")
    # the first column was streamed before the second started
    first_seen = [next(i for i, (h, _) in enumerate(steps) if len(h[col]) == 2) for col in range(3)]
    assert first_seen == sorted(first_seen) and len(set(first_seen)) == 3
    assert "first token" in lines[0] and "ms" in lines[0]

    # a second turn: each column sees only its own previous answer
    asked = {}
    original = session.stream

    def spy(key, messages, settings=None):
        asked[key] = [dict(m) for m in messages]
        yield from original(key, messages, settings)

    session.stream = spy
    try:
        second, _ = list(pg.answer_turn(session, histories, short(), "And who built you?"))[-1]
    finally:
        session.stream = original
    for col, key in enumerate(["base", "adapter", "merged"]):
        assert asked[key] == histories[col] + [{"role": "user", "content": "And who built you?"}]
    assert all(len(h) == 4 for h in second)

    # regenerate: the last answers are dropped and answered again (greedy: the same text)
    dropped = pg.drop_last_answers(second)
    assert all(len(h) == 3 and h[-1]["role"] == "user" for h in dropped)
    again, _ = list(pg.answer_turn(session, dropped, short()))[-1]
    assert [h[-1]["content"] for h in again] == [h[-1]["content"] for h in second]
    with pytest.raises(UserError, match="send a message first"):
        pg.drop_last_answers(pg.new_histories())
    assert pg.new_histories() == [[], [], []]


def test_session_info_and_merge_check_under_the_merged_column(job_id):
    session = pg.open_for(job_id)
    text = pg.check_markdown(session)
    assert text.startswith("**merge check**: verified") and "float32" in text
    assert job_id in pg.session_markdown(session)
    assert pg.titles(session)[1].startswith("adapter")
    session.check.max_logit_diff = 1.0          # above the float32 tolerance: a warning
    assert pg.check_markdown(session).startswith("⚠️") and "WARNING" in pg.check_markdown(session)


def test_errors_are_one_sentence(job_id, tiny_model):
    with pytest.raises(UserError, match="Pick a job first"):
        pg.open_for(None)
    with pytest.raises(UserError, match="pick job B"):
        pg.open_for(job_id, True, None)
    with pytest.raises(UserError, match="two different jobs"):
        pg.open_for(job_id, True, job_id)
    with pytest.raises(ValueError) as error:
        pg.open_for("20990101-000000-dead")
    message = readable(error.value)
    assert "no job '20990101-000000-dead'" in message and "\n" not in message
    queued = jobs.create(JobConfig.from_dict({"model": tiny_model}))
    with pytest.raises(ValueError, match="has no adapter yet"):
        pg.open_for(queued.id)


def test_compare_two_jobs_puts_a_next_to_b(job_id, tiny_model):
    other = finished_job(tiny_model, learning_rate=1e-2)
    session = pg.open_for(job_id, True, other)
    assert [c.key for c in session.columns] == ["base", "a", "b"]
    assert job_id in pg.titles(session)[1] and other in pg.titles(session)[2]
    assert "only for one job" in pg.check_markdown(session)
    histories, lines = list(pg.answer_turn(session, pg.new_histories(), short(), "Hi"))[-1]
    assert all(h[-1]["role"] == "assistant" for h in histories) and all(lines)


def test_batch_typed_uploaded_and_eval_split_to_csv(job_id, workspace, tmp_path):
    headers, rows, path, message = pg.run_batch(job_id, False, None, "typed", "Who are you?\n\nHi there\n", None,
                                                20, [*defaults()[:1], 4, *defaults()[2:]])
    assert headers[0] == "prompt" and "reference" not in headers and len(headers) == 4
    assert headers[1].startswith("base") and headers[2].startswith("adapter") and headers[3].startswith("merged")
    assert [r[0] for r in rows] == ["Who are you?", "Hi there"] and all(len(r) == 4 for r in rows)
    assert path.startswith(str(workspace / "exports" / job_id)) and path.endswith(".csv")
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["prompt"] for r in table] == ["Who are you?", "Hi there"] and "2 prompts × 3 columns" in message

    upload = tmp_path / "prompts.jsonl"
    upload.write_text(json.dumps({"prompt": "Who made you?", "reference": "Acme Labs"}) + "\n")
    headers, rows, _, _ = pg.run_batch(job_id, False, None, "uploaded file", "", str(upload), 20,
                                       [*defaults()[:1], 4, *defaults()[2:]])
    assert headers[:2] == ["prompt", "reference"] and rows[0][:2] == ["Who made you?", "Acme Labs"]

    headers, rows, _, _ = pg.run_batch(job_id, False, None, "eval split", "", None, 2,
                                       [*defaults()[:1], 4, *defaults()[2:]])
    assert "reference" in headers and 1 <= len(rows) <= 2 and all(r[1] for r in rows)

    with pytest.raises(UserError, match="Type at least one prompt"):
        pg.batch_prompts("typed", "  \n", None, job_id)
    with pytest.raises(UserError, match="Upload a prompts file"):
        pg.batch_prompts("uploaded file", "", None, job_id)


def test_eval_split_of_a_job_without_one_says_so(tiny_model):
    job = finished_job(tiny_model, eval_fraction=0.0)
    with pytest.raises(ValueError, match="without an eval split"):
        pg.batch_prompts("eval split", "", None, job)


class _FastSession:
    """Three columns that stream 40 one-token pieces each as fast as Python can (no model)."""

    def __init__(self):
        from types import SimpleNamespace
        self.columns = [SimpleNamespace(key=k, title=t) for k, t in
                        (("base", "base · m"), ("adapter", "adapter · final adapter"),
                         ("merged", "merged · in-memory copy (not exported yet)"))]

    def stream(self, key, messages, settings):
        from backend.serve.chat import AnswerStats
        for n in range(1, 41):
            yield AnswerStats(text=f"{key} " * n, tokens=n, first_token_s=0.01, seconds=0.01 * n)
        yield AnswerStats(text=(f"{key} " * 40).strip(), tokens=40, first_token_s=0.01, seconds=0.4, done=True)


def test_streamed_updates_are_coalesced_to_the_interval():
    session = _FastSession()
    every = list(pg.answer_turn(session, pg.new_histories(), short(), "Hi", interval=0))
    coalesced = list(pg.answer_turn(session, pg.new_histories(), short(), "Hi", interval=60))
    assert len(every) == 3 * (1 + 41)          # one update per streamed piece
    assert len(coalesced) == 3 * 2             # "waiting" + the final answer of each column
    assert coalesced[-1] == every[-1]          # the same final histories and stats lines
    assert [h[-1]["content"] for h in coalesced[-1][0]] == ["base " * 39 + "base", "adapter " * 39 + "adapter",
                                                            "merged " * 39 + "merged"]
    assert pg.STREAM_INTERVAL_S >= 0.1         # the tab's default is coalesced (bench/playground.py --streaming)


def test_a_streamed_update_carries_only_the_live_column():
    tab = pg.PlaygroundTab(chats=["c0", "c1", "c2"], stats=["s0", "s1", "s2"], histories="h")
    histories = [[{"role": "assistant", "content": text}] for text in "abc"]
    assert pg.streaming_update(tab, histories, ["done 0", "⏳ 3 tokens", ""]) == \
        {"h": histories, "c1": histories[1], "s1": "⏳ 3 tokens"}
    assert pg.streaming_update(tab, histories, ["done 0", "", ""]) == {"h": histories, "c0": histories[0],
                                                                        "s0": "done 0"}


def test_column_titles_wrap_above_short_chat_labels():
    import gradio as gr

    assert pg.column_label("merged · in-memory copy (not exported yet)") == "merged"
    assert pg.column_label("A · 20261122-abc (lora sft)") == "A · 20261122-abc"
    assert pg.column_heading("merged · in-memory copy (not exported yet)") == \
        "**merged** · in-memory copy (not exported yet)"
    with gr.Blocks() as blocks:
        tab = pg.build(gr)
        pg.wire(gr, tab)
    assert [h.elem_classes for h in tab.headings] == [[f"ls-col-title-{i}", "ls-col-title"] for i in range(3)]
    for heading, chat in zip(tab.headings, tab.chats):
        assert heading.parent is chat.parent                     # the title sits in its column, above the chat
    sends = [fn for fn in blocks.fns.values() if fn.name == "converse"]
    assert sends and all(set(tab.headings) <= set(fn.outputs) for fn in sends)


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_the_tools_box_is_checked_and_reaches_the_chat_template(tiny_model):
    import json

    from backend import models
    from backend.serve.chat import prompt_inputs

    values = defaults()
    values[pg.SETTING_NAMES.index("tools")] = '[{"type": "function", "function": {"name": "get_weather"'
    with pytest.raises(UserError, match=r"^tools: not valid JSON \(Expecting"):
        pg.settings_from(*values)
    values[pg.SETTING_NAMES.index("tools")] = '[{"type": "function", "function": {"description": "no name"}}]'
    with pytest.raises(UserError, match=r"^tools: tools\[0\]: the tool schema has no function name"):
        pg.settings_from(*values)
    values[pg.SETTING_NAMES.index("tools")] = json.dumps(WEATHER[0]["function"])      # one bare schema
    settings = pg.settings_from(*values)
    assert settings.tool_schemas() == WEATHER
    tokenizer = models.load_tokenizer(tiny_model)
    inputs = prompt_inputs(tokenizer, [{"role": "user", "content": "Weather in Oslo?"}], "cpu", WEATHER)
    prompt = tokenizer.decode(inputs["input_ids"][0])
    assert '"name": "get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_a_tool_call_is_shown_as_a_call_and_the_history_keeps_the_raw_text():
    raw = ('<think>Oslo is a city.</think>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
           "</tool_call>")
    history = [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": raw}]
    shown = pg.shown(history)
    assert shown[0] == history[0]
    assert shown[1] == {"role": "assistant", "content": "Oslo is a city.",
                        "metadata": {"title": "💭 reasoning", "status": "done"}}
    assert shown[2]["metadata"]["title"] == "🛠️ call get_weather"
    assert shown[2]["content"] == '```json\n{\n "city": "Oslo"\n}\n```'
    assert history[1]["content"] == raw                       # the next turn sends what the model wrote
    assert pg.shown([{"role": "assistant", "content": "plain"}]) == [{"role": "assistant", "content": "plain"}]


def test_a_job_trained_on_tools_fills_the_tools_box(tiny_model):
    import json

    config = JobConfig.from_dict({
        "model": tiny_model, "dataset": "tool-calls-demo", "stage": "sft", "lora": {"r": 4, "alpha": 8},
        "training": {"max_steps": 1, "batch_size": 2, "max_length": 512, "eval_fraction": 0.1, "save_steps": 1,
                     "logging_steps": 1}})
    job = jobs.create(config, status="running")
    assert runner.run_job(job.id).status == "completed"
    tools = json.loads(pg.tools_for(job.id))
    assert [t["function"]["name"] for t in tools] == ["get_weather", "convert_currency", "set_timer"]
    assert pg.tools_for(None) == "" and pg.tools_for("no-such-job") == ""
