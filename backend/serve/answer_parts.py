"""An answer cut into the parts a chat view shows differently: prose, reasoning sections and tool calls.

A model trained on tool calls answers with text such as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
(the form the studio's tool format and Qwen / Hermes templates write; Mistral's `[TOOL_CALLS]` and Llama's
`<|python_tag|>` prefixes are read too). The playground shows each call as a call (its function name and
arguments), each <think> section as reasoning, and the rest as the answer's text. The conversation itself keeps
the raw text, so the next turn sends the model exactly what it wrote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from backend.evaluate.formats import parse_tool_calls

_SECTION = re.compile(r"<think>(.*?)(?:</think>|$)|<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_PREFIXED = re.compile(r"^\s*(\[TOOL_CALLS\]|<\|python_tag\|>)(.*)$", re.S)


@dataclass(frozen=True)
class AnswerPart:
    kind: str                            # "text" | "reasoning" | "call" | "broken_call"
    text: str = ""                       # the prose, the reasoning, or a broken call's raw text
    name: str = ""                       # a call's function
    arguments: dict = field(default_factory=dict)
    problem: str = ""                    # why a call could not be read


def answer_parts(text: str) -> list[AnswerPart]:
    """The answer's parts in order; an answer with no call and no reasoning is one text part."""
    text = str(text or "")
    prefixed = _PREFIXED.match(text)
    if prefixed:
        return _calls(prefixed.group(1) + prefixed.group(2))
    parts, cursor = [], 0
    for match in _SECTION.finditer(text):
        _prose(parts, text[cursor:match.start()])
        if match.group(1) is not None:
            if match.group(1).strip():
                parts.append(AnswerPart("reasoning", match.group(1).strip()))
        else:
            parts += _calls(match.group(0))
        cursor = match.end()
    _prose(parts, text[cursor:])
    return parts or [AnswerPart("text", "")]


def _prose(parts: list, text: str) -> None:
    if text.strip():
        parts.append(AnswerPart("text", text.strip()))


def _calls(text: str) -> list[AnswerPart]:
    calls, problem = parse_tool_calls(text)
    if not calls:
        return [AnswerPart("broken_call", text.strip(), problem=problem)]
    return [AnswerPart("call", name=c["name"], arguments=c["arguments"] if isinstance(c["arguments"], dict)
                       else {"arguments": c["arguments"]}) for c in calls]
