"""Tool calls on the OpenAI-compatible API, read by the `openai` client's own types and stream accumulator."""
from __future__ import annotations

import json

import anyio
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from backend.serve import openai_api, toolcall_api
from backend.serve.engine import Piece, ServeError

ANSWER = ('Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
          '\n<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}}\n</tool_call>')


def shape():
    return openai_api._Shape("chatcmpl-test", 1, "job", chat=True)


def test_a_whole_answer_with_calls_is_tool_calls_for_the_client():
    piece = Piece("", True, ANSWER, "stop", 40, 30)
    completion = ChatCompletion.model_validate(shape().whole(piece, tools=True))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look that up."
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("set_timer", {"minutes": 5})]
    assert len({c.id for c in calls}) == 2
    # without tools in the request the same text is plain content
    plain = ChatCompletion.model_validate(shape().whole(piece)).choices[0]
    assert plain.message.content == ANSWER and plain.message.tool_calls is None


def test_a_streamed_answer_sends_prose_then_the_calls_as_one_delta():
    def pieces():
        for i in range(0, len(ANSWER), 4):
            yield Piece(ANSWER[i:i + 4])
        yield Piece("", True, ANSWER, "stop", 40, 30)

    async def collect():
        return [event async for event in openai_api._events(pieces(), shape(), False, toolcall_api.CallStream())]

    events = anyio.run(collect)
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e[len("data: "):])) for e in events[:-1]]
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert final.message.content.strip() == "Let me look that up."
    assert [c.function.name for c in final.message.tool_calls] == ["get_weather", "set_timer"]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "<tool_call>" not in streamed                  # the call's text never reaches the client as prose


def test_a_call_that_cannot_be_read_stays_text():
    broken = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    assert toolcall_api.split(broken) == (broken, [])
    stream = toolcall_api.CallStream()
    sent = "".join(stream.feed(ch) for ch in broken)
    assert sent + stream.finish()[0] == broken


def test_bad_tools_and_bad_earlier_calls_are_one_sentence():
    with pytest.raises(ServeError, match=r"^tools\[1\]: the tool schema has no function name"):
        toolcall_api.schemas([{"type": "function", "function": {"name": "ok"}}, {"type": "function"}])
    with pytest.raises(ServeError, match=r"arguments of the call to 'f' are not valid JSON"):
        toolcall_api.message("assistant", "", [{"id": "c1", "type": "function",
                                                "function": {"name": "f", "arguments": "{oops"}}], None, 1)
    assert toolcall_api.message("developer", "Be brief.", None, None, 0) == {"role": "system", "content": "Be brief."}
