"""Tool calling on the OpenAI-compatible API: `tools` in, `tool_calls` out, in OpenAI's wire format.

Requests: the schemas and an assistant's earlier calls are normalised as dataset rows are
(backend.data.toolcalls: arguments parsed), so the chat template renders them as it did in training; a tool
result (role "tool") is passed on as is. Answers: the calls the model wrote (backend.serve.answer_parts: the
Hermes `<tool_call>` form and the other families' prefixes) become `tool_calls` with arguments as a JSON string
and finish_reason "tool_calls"; the text around them stays the content. Streaming sends prose as it arrives and
holds back from where a call starts; the calls go out as one delta when the answer is complete.
"""
from __future__ import annotations

import json
import re
import uuid

from backend.data.report import Problem
from backend.data.toolcalls import normalise_calls, normalise_tools
from backend.serve.answer_parts import answer_parts
from backend.serve.engine import ServeError

CALL_OPENERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|$)", re.S)


def _first_error(problems: list[Problem]) -> Problem | None:
    return next((p for p in problems if p.severity == "error"), None)


def schemas(tools: list[dict] | None) -> list[dict] | None:
    """The request's tools for the chat template, or a ServeError naming the bad one."""
    if not tools:
        return None
    if not all(isinstance(tool, dict) for tool in tools):
        raise ServeError("tools must be a list of function schema objects", param="tools")
    problems: list[Problem] = []
    out = normalise_tools(tools, problems)
    error = _first_error(problems)
    if error:
        raise ServeError(f"{error.field}: {error.message}", param="tools")
    return out


def message(role: str, content: str, tool_calls: list[dict] | None, tool_call_id: str | None, index: int) -> dict:
    """One request message as the chat template takes it."""
    out = {"role": "system" if role == "developer" else role, "content": content}
    if tool_calls:
        problems: list[Problem] = []
        calls = normalise_calls(tool_calls, f"messages[{index}].tool_calls", problems)
        error = _first_error(problems)
        if error:
            raise ServeError(f"{error.field}: {error.message}", param=f"messages[{index}].tool_calls")
        out["tool_calls"] = calls
    if tool_call_id:
        out["tool_call_id"] = tool_call_id
    return out


def split(text: str) -> tuple[str, list[dict]]:
    """(content, tool_calls in OpenAI's shape) of a whole answer; no calls when any call cannot be read (the
    answer then stays text, so the client sees what the model wrote)."""
    parts = answer_parts(text)
    calls = [p for p in parts if p.kind == "call"]
    if not calls or any(p.kind == "broken_call" for p in parts):
        return text, []
    content = text
    if any(text.lstrip().startswith(opener) for opener in CALL_OPENERS[1:]):
        content = ""
    content = _BLOCK.sub("", content).strip()
    return content, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": p.name, "arguments": json.dumps(p.arguments, ensure_ascii=False)}}
                     for p in calls]


def deltas(calls: list[dict]) -> list[dict]:
    """Whole calls as streamed tool_calls deltas (each with its index)."""
    return [{"index": i, **call} for i, call in enumerate(calls)]


class CallStream:
    """Streamed text, minus what may be a tool call: feed() returns the prose that is safe to send now."""

    def __init__(self):
        self.sent, self.held = "", ""

    def feed(self, delta: str) -> str:
        text = self.held + delta
        start = min((i for i in (text.find(o) for o in CALL_OPENERS) if i >= 0), default=-1)
        if start < 0 and not self.sent.strip() and any(o.startswith(text.lstrip()) for o in CALL_OPENERS[1:]):
            start = 0                                     # a prefix-style opener may be arriving
        if start < 0:       # keep back a tail that could be the start of "<tool_call>"
            keep = next((n for n in range(min(len(text), len(CALL_OPENERS[0]) - 1), 0, -1)
                         if CALL_OPENERS[0].startswith(text[-n:])), 0)
            start = len(text) - keep
        out, self.held = text[:start], text[start:]
        self.sent += out
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(held text to send as content, calls): the calls when the held text holds readable ones."""
        held, self.held = self.held, ""
        if not held:
            return "", []
        content, calls = split(held)
        return (content, calls) if calls else (held, [])
