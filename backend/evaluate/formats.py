"""The report's "format checks" section: does each variant still write what the data's format asks for?

Only where the held-out rows call for it (no such rows: no section, `run` returns None):
- tool calls: rows that declare tools and whose reference answer calls one. An answer passes when a call can
  be read from it, every call names a declared function, its arguments are a JSON object and hold the
  function's required arguments. Calls are read in the forms chat templates write them: Hermes / Qwen
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (one block per call), a bare JSON object or list of
  them (`"arguments"` or Llama's `"parameters"`, OpenAI's `{"function": {...}}` wrapping, arguments as a JSON
  string), after Mistral's `[TOOL_CALLS]` or Llama's `<|python_tag|>`, or in a ```json fence. A second figure:
  the share of answers that call the same function(s) as the reference.
- JSON: rows whose reference is a JSON object or array (optionally in a ```json fence): the share of answers
  that parse as one.
- reasoning: rows whose reference has a <think>...</think> section: the share of answers whose think sections
  are balanced (every <think> closed, in order) and not empty. When the chat template's generation prompt
  already opens <think>, the answer is read as if it began with it.

The answers are the ones the task section generated (no second generation); without that section, only the
rows that need a check are generated here.
"""
from __future__ import annotations

import json
import re
import time

from backend.data import toolcalls
from backend.evaluate.common import EvalContext, Metric, Progress, RowResult, SectionResult

SECTION = "formats"

HELP = {
    "tool_call_valid": "share of answers with a readable tool call that names a declared function and gives its "
                       "required arguments (rows whose reference calls a tool)",
    "tool_call_name": "share of answers that call the same function(s) as the reference",
    "json_valid": "share of answers that parse as a JSON object or array (rows whose reference is one)",
    "think_balanced": "share of answers whose <think> sections are balanced and not empty (rows whose reference "
                      "has one)",
}
LABELS = {"tool_call_valid": "valid tool call", "tool_call_name": "right function called",
          "json_valid": "valid JSON", "think_balanced": "balanced <think>"}

_TOOL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)
_PREFIXES = ("[TOOL_CALLS]", "<|python_tag|>")


# ------------------------------------------------------------------ parsing (plain functions, tested on strings)

def parse_json(text: str):
    """(value, problem): the text as a JSON object or array (a whole-text ```json fence allowed)."""
    text = str(text or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        return None, "empty answer"
    try:
        value = json.loads(text)
    except ValueError as error:
        return None, f"not JSON ({error.msg} at character {error.pos})"
    if not isinstance(value, (dict, list)):
        return None, f"JSON {type(value).__name__}, not an object or array"
    return value, ""


def parse_tool_calls(text: str) -> tuple[list[dict], str]:
    """(calls as [{"name", "arguments"}], problem): the tool calls written in an answer ([] and why when none)."""
    text = str(text or "").strip()
    blocks = _TOOL_BLOCK.findall(text) if "<tool_call>" in text else None
    if blocks is None:
        for prefix in _PREFIXES:
            if text.startswith(prefix):
                text = text[len(prefix):].strip()
        value, problem = parse_json(text)
        if value is None:
            value = _first_json(text)
            if value is None:
                return [], "no tool call found" if problem != "empty answer" else problem
        candidates = [value]
    else:
        candidates = []
        for block in blocks:
            value, problem = parse_json(block)
            if value is None:
                return [], f"a <tool_call> block is {problem}"
            candidates.append(value)
    calls = []
    for value in candidates:
        for item in value if isinstance(value, list) else [value]:
            call = _call(item)
            if call is None:
                return [], "JSON without a function name"
            calls.append(call)
    return (calls, "") if calls else ([], "no tool call found")


def _first_json(text: str):
    """The first JSON object or array embedded in prose, if any."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text[match.start():])
        except ValueError:
            continue
        if isinstance(value, (dict, list)) and value:
            return value
    return None


def _call(item) -> dict | None:
    if not isinstance(item, dict):
        return None
    function = item.get("function") if isinstance(item.get("function"), dict) else item
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    return {"name": name, "arguments": arguments}


declared_functions = toolcalls.declared     # one reading of a tools list, shared with the dataset checks


def check_tool_calls(text: str, tools: list | None) -> tuple[list[dict], str]:
    """(calls, problem): problem is "" when every call is declared and complete."""
    calls, problem = parse_tool_calls(text)
    if problem:
        return calls, problem
    declared = declared_functions(tools)
    for call in calls:
        if call["name"] not in declared:
            return calls, f"calls {call['name']!r}, which the row does not declare"
        if not isinstance(call["arguments"], dict):
            return calls, f"the arguments of {call['name']!r} are not a JSON object"
        required = declared[call["name"]].get("required") or []
        missing = [name for name in required if name not in call["arguments"]]
        if missing:
            return calls, f"{call['name']!r} misses required argument(s) {', '.join(missing)}"
    return calls, ""


def check_think(text: str, opened: bool = False) -> str:
    """'' when the answer's <think> sections are balanced and none is empty, else what is wrong."""
    text = str(text or "")
    if opened and not text.lstrip().startswith("<think>"):
        text = "<think>" + text
    tags = re.findall(r"</?think>", text)
    if not tags:
        return "no <think> section"
    depth, sections = 0, []
    for match in re.finditer(r"</?think>", text):
        if match.group(0) == "<think>":
            if depth:
                return "a <think> opens inside another"
            depth, start = 1, match.end()
        else:
            if not depth:
                return "a </think> closes nothing"
            depth = 0
            sections.append(text[start:match.start()])
    if depth:
        return "a <think> section is never closed"
    if any(not section.strip() for section in sections):
        return "an empty <think> section"
    return ""


def has_think(text: str) -> bool:
    return bool(re.search(r"<think>.*?</think>", str(text or ""), re.S))


# ------------------------------------------------------------------ the section

def plan(rows) -> dict[str, list[int]]:
    """Which rows (indexes) each check applies to."""
    tools = [i for i, row in enumerate(rows) if row.tools and row.reference_calls]
    taken = set(tools)
    json_rows = [i for i, row in enumerate(rows) if i not in taken and row.reference
                 and parse_json(row.reference)[0] is not None]
    think = [i for i, row in enumerate(rows) if has_think(row.reference)]
    return {"tool_call": tools, "json": json_rows, "think": think}


def run(ctx: EvalContext, progress: Progress | None, task: SectionResult | None, rows) -> SectionResult | None:
    """The format checks of every variant over `rows` (heldout.load_rows(ctx), the task section's rows in the
    same order), or None when no row calls for one."""
    started = time.perf_counter()
    progress = progress or Progress()
    checks = plan(rows)
    needed = sorted(set().union(*checks.values()))
    if not needed:
        return None
    keys = [v.key for v in ctx.variants]
    answers = _answers(ctx, progress, task, rows, needed, keys)
    opened = _prompt_opens_think(ctx, rows[checks["think"][0]]) if checks["think"] else False

    section = SectionResult(SECTION)
    per_row = {i: {key: {} for key in keys} for i in needed}
    notes = {i: [] for i in needed}
    values = {name: {} for name in HELP}
    counts = {}
    for key in keys:
        for i in checks["tool_call"]:
            calls, problem = check_tool_calls(answers[key][i], rows[i].tools)
            per_row[i][key]["tool_call_valid"] = 0.0 if problem else 1.0
            expected = sorted(call["name"] for call in rows[i].reference_calls)
            per_row[i][key]["tool_call_name"] = 1.0 if sorted(c["name"] for c in calls) == expected else 0.0
            if problem:
                notes[i].append(f"{key}: {problem}")
        for i in checks["json"]:
            _, problem = parse_json(answers[key][i])
            per_row[i][key]["json_valid"] = 0.0 if problem else 1.0
            if problem:
                notes[i].append(f"{key}: {problem}")
        for i in checks["think"]:
            problem = check_think(answers[key][i], opened)
            per_row[i][key]["think_balanced"] = 0.0 if problem else 1.0
            if problem:
                notes[i].append(f"{key}: {problem}")
        for name, check in (("tool_call_valid", "tool_call"), ("tool_call_name", "tool_call"),
                            ("json_valid", "json"), ("think_balanced", "think")):
            if checks[check]:
                figures = [per_row[i][key][name] for i in checks[check]]
                values[name][key] = sum(figures) / len(figures)
                counts[name] = len(figures)
    section.metrics = [Metric(SECTION, name, LABELS[name], True, values[name], HELP[name], counts[name])
                       for name in HELP if name in counts]
    for i in needed:
        row = rows[i]
        section.rows.append(RowResult(SECTION, i + 1, row.prompt_text, row.reference,
                                      answers={key: answers[key][i] for key in keys}, scores=per_row[i],
                                      note="; ".join(notes[i])))
    skipped = sum(1 for row in rows if row.tools and not row.reference_calls)
    if skipped:
        section.notes.append(f"{skipped} rows declare tools but their reference calls none; their answers are "
                             "not checked for a call")
    if checks["think"] and opened:
        section.notes.append("the chat template's generation prompt opens <think>, so answers are read as "
                             "starting inside it")
    section.seconds = round(time.perf_counter() - started, 2)
    return section


def _answers(ctx, progress, task, rows, needed, keys) -> dict[str, dict[int, str]]:
    """Each variant's answer for the needed rows: the task section's, else generated here."""
    from backend.evaluate.generate import generate

    if task is not None:
        by_number = {row.row: row for row in task.rows}
        if all(i + 1 in by_number and all(k in by_number[i + 1].answers for k in keys) for i in needed):
            return {key: {i: by_number[i + 1].answers[key] for i in needed} for key in keys}
    progress.add_total(len(needed) * len(keys))
    prompts = [rows[i].messages for i in needed]
    tools = [rows[i].tools for i in needed]
    out = {}
    for variant in ctx.variants:
        texts = generate(ctx, variant, prompts,
                         lambda k, key=variant.key: progress.advance(k, f"format checks · {key}: generating"),
                         tools=tools if any(tools) else None)
        out[variant.key] = dict(zip(needed, texts))
    return out


def _prompt_opens_think(ctx, row) -> bool:
    """Whether the chat template's generation prompt ends inside an open <think> (Qwen3-style templates)."""
    from backend.serve.chat import conversation

    kwargs = {"tools": row.tools} if row.tools else {}
    try:
        text = ctx.tokenizer.apply_chat_template(conversation(row.messages, ctx.settings), tokenize=False,
                                                 add_generation_prompt=True, **kwargs)
    except Exception:  # noqa: BLE001 - a template that cannot render: read answers as written
        return False
    tail = text.rstrip()
    return tail.endswith("<think>")
