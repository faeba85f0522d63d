"""An answer cut into prose, reasoning and tool calls, for views that show a call as a call."""
from __future__ import annotations

from backend.serve.answer_parts import AnswerPart, answer_parts

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_a_hermes_call_is_a_call():
    assert answer_parts(CALL) == [AnswerPart("call", name="get_weather", arguments={"city": "Paris"})]


def test_prose_reasoning_and_two_calls_keep_their_order():
    text = ("<think>The user wants two things.</think>Let me check.\n" + CALL +
            '\n<tool_call>\n{"name": "set_timer", "arguments": "{\\"minutes\\": 5}"}\n</tool_call>')
    assert answer_parts(text) == [AnswerPart("reasoning", "The user wants two things."),
                                  AnswerPart("text", "Let me check."),
                                  AnswerPart("call", name="get_weather", arguments={"city": "Paris"}),
                                  AnswerPart("call", name="set_timer", arguments={"minutes": 5})]


def test_other_families_prefixes_and_plain_answers():
    assert answer_parts('[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}]') == [
        AnswerPart("call", name="f", arguments={"x": 1})]
    assert answer_parts("Paris is the capital.") == [AnswerPart("text", "Paris is the capital.")]
    assert answer_parts("") == [AnswerPart("text", "")]
    assert answer_parts("<think>\n\n</think>Hi") == [AnswerPart("text", "Hi")]     # an empty section is no part


def test_a_call_cut_off_or_without_a_name_says_why():
    [part] = answer_parts('<tool_call>\n{"name": "get_wea')
    assert part.kind == "broken_call" and part.problem.startswith("a <tool_call> block is not JSON")
    [part] = answer_parts('<tool_call>{"arguments": {}}</tool_call>')
    assert part.kind == "broken_call" and part.problem == "JSON without a function name"
