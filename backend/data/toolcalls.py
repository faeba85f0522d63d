"""Tool definitions, assistant tool calls and reasoning sections in chat rows: normalised and checked per row.

Canonical forms (what transformers' chat templates expect, and what the studio's own tool format writes):
    tools       [{"type": "function", "function": {"name", "description"?, "parameters"?}}]
    tool_calls  [{"type": "function", "function": {"name", "arguments": {...}}, "id"?}]   arguments parsed
A bare {"name", "parameters"} schema and a bare {"name", "arguments"} call are accepted and wrapped; OpenAI's
arguments-as-a-JSON-string are parsed (an unparsable string is an error: the model would learn broken JSON).
ShareGPT's `function_call` turns hold the call as JSON text in `value`; it becomes the assistant's tool_calls.

Per row, every call must name a function the row's tools declare and give its required arguments; argument
names the schema does not list are a warning. Reasoning: a `<think>...</think>` section in an assistant turn,
or a `reasoning_content` field (Qwen3-style templates render it as the think section).
"""
from __future__ import annotations

import json
import re

from backend.data.report import Problem

THINK = re.compile(r"<think>(.*?)</think>", re.S)
REASONING_KEYS = ("reasoning_content", "reasoning")


def normalise_tools(tools: list[dict], problems: list) -> list[dict] | None:
    """Each schema in OpenAI's wrapped form; None (with errors appended) when one has no name."""
    out, names = [], set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem("error", f"tools[{i}]", "the tool schema has no function name; write it as "
                                    '{"type": "function", "function": {"name": ..., "parameters": {...}}}'))
            return None
        if name in names:
            problems.append(Problem("warning", f"tools[{i}]", f"the function {name!r} is declared twice; keep one "
                                                              "schema per function"))
        names.add(name)
        out.append(tool if "function" in tool else {"type": "function", "function": dict(tool)})
    return out


def normalise_calls(raw, where: str, problems: list) -> list[dict] | None:
    """A message's tool_calls (one call or a list) in the canonical form, or None with the errors appended."""
    calls = raw if isinstance(raw, list) else [raw]
    out = []
    for i, call in enumerate(calls):
        spot = f"{where}[{i}]" if isinstance(raw, list) else where
        if not isinstance(call, dict):
            problems.append(Problem("error", spot, 'a tool call must be an object {"name": ..., "arguments": '
                                                   "{...}}"))
            return None
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem("error", spot, "the tool call has no function name; give the name of the "
                                                   "function it calls"))
            return None
        arguments = function.get("arguments", function.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as error:
                problems.append(Problem("error", f"{spot}.arguments", f"the arguments of the call to {name!r} are "
                                        f"not valid JSON ({error.msg} at character {error.pos}); write them as a "
                                        "JSON object"))
                return None
        if not isinstance(arguments, dict):
            problems.append(Problem("error", f"{spot}.arguments", f"the arguments of the call to {name!r} must be "
                                    "a JSON object of argument names and values"))
            return None
        clean = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call.get("id") is not None:
            clean["id"] = call["id"]
        out.append(clean)
    return out


def sharegpt_call(value, where: str, problems: list) -> list[dict] | None:
    """The tool calls of a ShareGPT function_call turn: its value is a JSON call (or list of calls)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            problems.append(Problem("error", where, f"the function_call turn is not valid JSON ({error.msg}); "
                                    'write it as {"name": ..., "arguments": {...}}'))
            return None
    return normalise_calls(value, where, problems)


def declared(tools: list | None) -> dict[str, dict]:
    """Function name -> its JSON-schema parameters, from OpenAI-style tools ({"type": "function", "function":
    {...}}) or bare function schemas; entries without a name are skipped."""
    out = {}
    for tool in tools or []:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if isinstance(function.get("name"), str):
            params = function.get("parameters")
            out[function["name"]] = params if isinstance(params, dict) else {}
    return out


def check_calls(messages: list[dict], tools: list[dict] | None, field: str, problems: list) -> None:
    """Every assistant call names a declared function with its required arguments (errors); argument names the
    schema does not list, calls without any declared tools and tool results no call asked for are warnings."""
    functions = declared(tools)
    called = False
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if message["role"] == "tool" and not called:
            problems.append(Problem("warning", where, "a tool result comes before any assistant tool call, so "
                                                      "nothing asked for it; put the call before it"))
        for call in message.get("tool_calls") or []:
            called = True
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            if not functions:
                problems.append(Problem("warning", f"{where}.tool_calls", f"the assistant calls {name!r} but the "
                                        "row declares no tools, so the model learns the call without its schema; "
                                        "add a tools column"))
                continue
            if name not in functions:
                problems.append(Problem("error", f"{where}.tool_calls", f"the assistant calls {name!r}, which the "
                                        f"row's tools do not declare (declared: {', '.join(sorted(functions))}); "
                                        "fix the name or add its schema"))
                continue
            schema = functions[name]
            missing = [p for p in schema.get("required") or [] if p not in arguments]
            if missing:
                problems.append(Problem("error", f"{where}.tool_calls", f"the call to {name!r} lacks its required "
                                        f"argument{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))};"
                                        " add them"))
            known = schema.get("properties")
            if isinstance(known, dict) and known and schema.get("additionalProperties") is not True:
                extra = [a for a in arguments if a not in known]
                if extra:
                    problems.append(Problem("warning", f"{where}.tool_calls", f"the call to {name!r} passes "
                                            f"{', '.join(map(repr, extra))}, which its schema does not list; "
                                            "fix the argument name or add it to the schema"))


def reasoning_of(message: dict) -> str | None:
    """The assistant turn's reasoning text ('' for an empty section), or None when it has no reasoning."""
    for key in REASONING_KEYS:
        if isinstance(message.get(key), str):
            return message[key].strip()
    found = THINK.findall(str(message.get("content") or ""))
    return "".join(found).strip() if found else None


def answers_of(row: dict) -> list[dict]:
    """The trained assistant turns of a canonical row (chat: all of them; preference: chosen; kto: good ones)."""
    if "messages" in row:
        return [m for m in row["messages"] if m["role"] == "assistant"]
    if "chosen" in row:
        return [m for m in row["chosen"] if m["role"] == "assistant"]
    if row.get("label"):
        return [m for m in row.get("completion", []) if m["role"] == "assistant"]
    return []


def row_shape(row: dict) -> tuple[str, bool]:
    """(reasoning: 'with' | 'empty' | 'without', whether an answer calls a tool) for the report's counts."""
    answers = answers_of(row)
    sections = [reasoning_of(m) for m in answers]
    reasoning = ("with" if any(sections) else "empty" if any(s is not None for s in sections) else "without")
    return reasoning, any(m.get("tool_calls") for m in answers)
