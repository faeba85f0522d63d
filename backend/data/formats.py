"""Row shapes in, canonical rows out.

Detected shapes (FORMATS) and the kind each normalises to:
    messages             {"messages": [{"role", "content"}...], "tools"?}                     -> chat
    sharegpt             {"conversations": [{"from", "value"}...], "system"?, "tools"?}       -> chat
    alpaca               {"instruction", "input"?, "output", "system"?, "history"?}          -> chat
    prompt_completion    {"prompt", "completion"} (strings or message lists)                  -> chat
    preference           {"prompt"?, "chosen", "rejected"} (strings or message lists)         -> preference
    sharegpt_preference  {"conversations", "chosen", "rejected"} (chosen/rejected: one message) -> preference
    kto                  {"prompt", "completion", "label"} (label bool, 0/1, "true"/"false")   -> kto
    kto_messages         {"messages" | "conversations", "label", "system"?, "tools"?}: the last turn (an
                         assistant turn) is the labelled completion, the turns before it the prompt  -> kto
    text                 {"text", "source"?} (a .txt / .md file is one such row, a folder one per file) -> text

Canonical kinds (message lists use role/content; chosen, rejected and completion hold assistant turns, the
TRL conversational format):
    chat        {"messages": [...], "tools"?: [...]}
    preference  {"prompt": [...], "chosen": [...], "rejected": [...], "tools"?: [...]}
    kto         {"prompt": [...], "completion": [...], "label": bool, "tools"?: [...]}
    text        {"text": str, "source"?: str}: one document of raw text (continued pretraining)
The stages each kind can feed: Kind.stages. Format.columns: the columns a format reads; every other column of
a file is reported as ignored (validate), with what it would be for (COLUMN_PURPOSES). Normalisers append
Problem(severity, field, message, stages) to `problems`, with messages that name no row (the caller adds it, and
groups them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from backend.data import toolcalls
from backend.data.report import Problem
from backend.vocab import Stage, StrEnum


class Kind(StrEnum):
    """The canonical row kinds. SFT trains on preference data's chosen answers and on KTO's desirable rows; KTO
    trains on each pair as two unpaired rows."""

    stages: tuple[Stage, ...]   # the stages this kind can feed, in Stage order
    natural_stage: Stage        # checked, split and measured when no stage is asked

    CHAT = "chat", (Stage.SFT,), Stage.SFT
    PREFERENCE = "preference", (Stage.SFT, Stage.DPO, Stage.ORPO, Stage.KTO), Stage.DPO
    KTO = "kto", (Stage.SFT, Stage.KTO), Stage.KTO
    TEXT = "text", (Stage.PRETRAIN,), Stage.PRETRAIN

    def __new__(cls, value: str, stages: tuple[Stage, ...], natural_stage: Stage):
        member = str.__new__(cls, value)
        member._value_ = value
        member.stages = stages
        member.natural_stage = natural_stage
        return member


@dataclass(frozen=True)
class Format:
    """One detected row shape: its name, what the report calls it, the kind it normalises to, and the
    normaliser (row, problems) -> canonical row of that kind, or None when the row has errors."""
    name: str
    label: str
    kind: Kind
    normalise: Callable[[dict, list[Problem]], dict | None]
    columns: tuple[str, ...] = ()    # the columns this format reads (any other column is ignored)


ROLES = {"system", "user", "assistant", "tool"}
ROLE_ALIASES = {"developer": "system", "function": "tool", "ipython": "tool"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
TRUE_LABELS = {"true", "1", "yes", "y", "up", "thumbs_up", "good", "desirable"}
FALSE_LABELS = {"false", "0", "no", "n", "down", "thumbs_down", "bad", "undesirable"}
PREF_STAGES = tuple(s for s in Stage if s.is_preference)
EXPECTED_COLUMNS = ("messages | conversations | instruction+output | prompt+completion | "
                    "prompt+chosen+rejected | prompt+completion+label | messages+label")
# what a column no format reads would be for, in the warning that says it is ignored
COLUMN_PURPOSES = {
    "tools": "function schemas the model may call",
    "label": "a good / bad mark on the answer (KTO)",
    "system": "a system prompt",
    "chosen": "the preferred answer of a preference pair",
    "rejected": "the worse answer of a preference pair",
    "prompt": "the prompt",
    "completion": "the answer",
    "messages": "a conversation",
    "conversations": "a conversation",
    "instruction": "an instruction (Alpaca)",
    "input": "the input of an instruction (Alpaca)",
    "output": "the answer to an instruction (Alpaca)",
    "history": "earlier question / answer pairs (Alpaca)",
    "text": "plain text",
    "id": "a row identifier",
    "source": "where the row comes from",
    "score": "a rating of the answer",
    "rating": "a rating of the answer",
}
METADATA_COLUMNS = {"id", "source", "score", "rating"}


def row_format(row: dict) -> str | None:
    """The shape of one row from its keys (and the first message's keys), or None when it fits none."""
    if "chosen" in row and "rejected" in row:
        if "conversations" in row or ("messages" in row and "prompt" not in row):
            return "sharegpt_preference"
        return "preference"
    if "completion" in row and "label" in row:
        return "kto"
    conv = row.get("messages", row.get("conversations"))
    if conv is not None and "label" in row and "prompt" not in row:
        return "kto_messages"
    if conv is not None:
        first = conv[0] if isinstance(conv, list) and conv else None
        if isinstance(first, dict) and ("from" in first or "value" in first) and "role" not in first:
            return "sharegpt"
        return "messages" if "messages" in row or isinstance(first, dict) and "role" in first else "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def detect_format(rows: list[dict]) -> tuple[str | None, str | None]:
    """(format, None) by majority vote over sample rows, or (None, one-sentence reason)."""
    votes: dict[str, int] = {}
    for row in rows:
        fmt = row_format(row)
        if fmt:
            votes[fmt] = votes.get(fmt, 0) + 1
    if votes:
        return max(votes, key=votes.get), None
    columns = sorted({k for row in rows for k in row})
    if not rows:
        return None, "no readable rows to detect the format from; fix the errors above"
    hint = ""
    return None, (f"cannot tell the format from the columns {columns}{hint}; expected {EXPECTED_COLUMNS}, "
                  "so rename the columns or give a column mapping such as {\"prompt\": \"question\", "
                  "\"completion\": \"answer\"}")


def apply_mapping(row: dict, mapping: dict) -> dict:
    """Rename source columns to canonical ones: mapping is {canonical name: column in the file}."""
    out = dict(row)
    for canonical, source in mapping.items():
        if source in out and source != canonical:
            out[canonical] = out.pop(source)
    return out


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _content(value, field: str, role: str, problems: list) -> str | None:
    """Message content as a string; text-part lists ([{"type": "text", "text": ...}]) are joined."""
    if isinstance(value, str):
        if not value.strip():
            if role in ("user", "assistant"):
                problems.append(Problem("error", field, f"the {role} message is empty; write its text or remove "
                                                        "the turn"))
                return None
            problems.append(Problem("warning", field, f"the {role} message is empty"))
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text"
                                                 and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    if value is None:
        problems.append(Problem("error", field, "content is missing; every message needs text content"))
        return None
    if isinstance(value, list) and any(isinstance(p, dict) and p.get("type") not in (None, "text")
                                       for p in value):
        problems.append(Problem("error", field, "content holds non-text parts (images or audio), which text "
                                                "models cannot train on; keep only text"))
        return None
    problems.append(Problem("error", field, f"content must be a string, got {_type_name(value)}; put the message "
                                            "text in a string"))
    return None


def _turns(value, field: str, problems: list, noun: str, needs: str, keys: str, norm_turn) -> list[dict] | None:
    """A conversation checked as a list, then turn by turn: norm_turn(turn, where, problems) gives the clean
    message or None. None when the list or any turn has errors (every one appended to problems)."""
    if not isinstance(value, list):
        problems.append(Problem("error", field, f"expected a list of {noun}s, got {_type_name(value)}"))
        return None
    if not value:
        problems.append(Problem("error", field, f"the conversation is empty; add at least {needs}"))
        return None
    out, ok = [], True
    for i, turn in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            problems.append(Problem("error", where, f"expected a {noun} object with {keys}, got "
                                                    f"{_type_name(turn)}"))
            clean = None
        else:
            clean = norm_turn(turn, where, problems)
        if clean is None:
            ok = False
        else:
            out.append(clean)
    return out if ok else None


def norm_messages(value, field: str, problems: list) -> list[dict] | None:
    """OpenAI-style messages validated into [{"role", "content"(, "tool_calls", "name", "tool_call_id")}]."""
    return _turns(value, field, problems, "message", "a user and an assistant message", "role and content",
                  _message)


def _message(msg: dict, where: str, problems: list) -> dict | None:
    role = msg.get("role")
    if role is None:
        problems.append(Problem("error", f"{where}.role", "the message has no role; use system, user, assistant "
                                                          "or tool"))
        return None
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        problems.append(Problem("error", f"{where}.role", f"unknown role {role!r}; use system, user, assistant "
                                                          "or tool"))
        return None
    clean = {"role": role}
    raw_calls = msg.get("tool_calls") or msg.get("function_call")   # function_call: OpenAI's older single call
    if raw_calls and msg.get("content") in (None, ""):
        clean["content"] = ""          # a pure tool call: the template renders tool_calls
    else:
        content = _content(msg.get("content"), f"{where}.content", role, problems)
        if content is None:
            return None
        clean["content"] = content
    if raw_calls:
        calls = toolcalls.normalise_calls(raw_calls, f"{where}.tool_calls", problems)
        if calls is None:
            return None
        clean["tool_calls"] = calls
    for key in ("name", "tool_call_id"):
        if msg.get(key) is not None:
            clean[key] = msg[key]
    reasoning = next((msg[k] for k in toolcalls.REASONING_KEYS if isinstance(msg.get(k), str)), None)
    if reasoning is not None:
        clean["reasoning_content"] = reasoning      # the name chat templates (Qwen3, the studio's prelude) read
    return clean


def norm_sharegpt(value, field: str, problems: list) -> list[dict] | None:
    """ShareGPT from/value turns into role/content messages (function_call -> assistant, observation -> tool)."""
    return _turns(value, field, problems, "turn", "a human and a gpt turn", "from and value", _sharegpt_turn)


def _sharegpt_turn(turn: dict, where: str, problems: list) -> dict | None:
    source = turn.get("from", turn.get("role"))
    role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
    if role is None:
        problems.append(Problem("error", f"{where}.from", f"unknown role {source!r}; use human, gpt, system, "
                                                          "function_call or observation"))
        return None
    if source == "function_call":       # the call as JSON text: the assistant's tool_calls
        calls = toolcalls.sharegpt_call(turn.get("value", turn.get("content")), f"{where}.value", problems)
        return None if calls is None else {"role": "assistant", "content": "", "tool_calls": calls}
    content = _content(turn.get("value", turn.get("content")), f"{where}.value", role, problems)
    return None if content is None else {"role": role, "content": content}


def _tools(row: dict, problems: list):
    tools = row.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            problems.append(Problem("error", "tools", "tools is a string but not valid JSON; give a list of "
                                                      "function schemas"))
            return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        problems.append(Problem("error", "tools", "tools must be a list of function schema objects"))
        return None
    return toolcalls.normalise_tools(tools, problems)


def _system(row: dict, messages: list[dict]) -> list[dict]:
    system = row.get("system")
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + messages
    return messages


def _check_chat(messages: list[dict], field: str, problems: list) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        problems.append(Problem("error", field, "the conversation has no assistant turn, so there is nothing to "
                                                "train on; add the answer"))
    elif messages[-1]["role"] != "assistant":
        problems.append(Problem("error", f"{field}[{len(messages) - 1}]", "the conversation ends with a "
                                f"{messages[-1]['role']} turn, not an assistant turn, so its last message would "
                                "never be trained; remove it or add the answer", (Stage.SFT,)))


def _side(value, field: str, problems: list, default_role: str, sharegpt: bool = False) -> list[dict] | None:
    """A prompt or answer given as a string, one message object or a message list."""
    if isinstance(value, str):
        if not value.strip():
            problems.append(Problem("error", field, f"{field} is empty; write the text"))
            return None
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        first = value[0] if value else None
        if sharegpt or (isinstance(first, dict) and "from" in first and "role" not in first):
            return norm_sharegpt(value, field, problems)
        return norm_messages(value, field, problems)
    if value is None:
        problems.append(Problem("error", field, f"{field} is missing; every row needs it"))
    else:
        problems.append(Problem("error", field, f"{field} must be a string or a list of messages, got "
                                                f"{_type_name(value)}"))
    return None


def _answer(messages: list[dict] | None, field: str, problems: list) -> list[dict] | None:
    if messages is None:
        return None
    if messages[-1]["role"] != "assistant":
        problems.append(Problem("error", field, f"{field} must end with an assistant message, got "
                                                f"{messages[-1]['role']}"))
        return None
    return messages


def normalise(fmt: str, row: dict, problems: list) -> dict | None:
    """The canonical row of kind FORMATS[fmt].kind, or None when the row has errors (appended to problems)."""
    return FORMATS[fmt].normalise(row, problems)


def _chat(row, problems, key, norm_turns):
    """A chat row from its conversation column `key`, read by norm_messages or norm_sharegpt."""
    messages = norm_turns(row.get(key), key, problems)
    tools = _tools(row, problems)
    if messages is None:
        return None
    messages = _system(row, messages)
    _check_chat(messages, key, problems)
    toolcalls.check_calls(messages, tools, key, problems)
    return {"messages": messages, "tools": tools} if tools else {"messages": messages}


def _n_messages(row, problems):
    return _chat(row, problems, "messages" if "messages" in row else "conversations", norm_messages)


def _n_sharegpt(row, problems):
    return _chat(row, problems, "conversations" if "conversations" in row else "messages", norm_sharegpt)


def _text(row, key, problems, required=True):
    value = row.get(key)
    if value is None or value == "":
        if required:
            problems.append(Problem("error", key, f"{key} is {'missing' if value is None else 'empty'}; every row "
                                                  "needs it"))
        return None
    if not isinstance(value, str):
        problems.append(Problem("error", key, f"{key} must be a string, got {_type_name(value)}"))
        return None
    if required and not value.strip():
        problems.append(Problem("error", key, f"{key} is empty; write the text"))
        return None
    return value


def _n_alpaca(row, problems):
    instruction = _text(row, "instruction", problems)
    extra = _text(row, "input", problems, required=False)
    output = _text(row, "output", problems)
    history = row.get("history") or []
    messages = []
    if not isinstance(history, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2
                                                and all(isinstance(x, str) for x in h) for h in history):
        problems.append(Problem("error", "history", "history must be a list of [question, answer] string pairs"))
        return None
    if instruction is None or output is None:
        return None
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt = f"{instruction}\n{extra}" if extra and extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": _system(row, messages)}


def _n_prompt_completion(row, problems):
    prompt = _side(row.get("prompt"), "prompt", problems, "user")
    completion = _answer(_side(row.get("completion"), "completion", problems, "assistant"), "completion",
                         problems)
    if prompt is None or completion is None:
        return None
    if any(m["role"] == "assistant" for m in prompt):
        problems.append(Problem("warning", "prompt", "the prompt holds assistant turns, which SFT trains too; "
                                                     "move them out of the prompt if they should not be learned",
                                (Stage.SFT,)))
    return {"messages": _system(row, prompt + completion)}


def _strip_prompt(prompt, answer):
    """Answers saved as whole conversations (prompt repeated in front): keep only the new turns."""
    if prompt and answer and len(answer) > len(prompt) and answer[:len(prompt)] == prompt:
        return answer[len(prompt):]
    return answer


def _pair(row, problems, prompt, sharegpt=False):
    chosen = _side(row.get("chosen"), "chosen", problems, "assistant", sharegpt)
    rejected = _side(row.get("rejected"), "rejected", problems, "assistant", sharegpt)
    tools = _tools(row, problems)
    if chosen is None or rejected is None:
        return None
    if prompt is None and "prompt" not in row and "conversations" not in row:
        # implicit prompt: chosen and rejected are whole conversations sharing everything but the last turn
        if len(chosen) > 1 and chosen[:-1] == rejected[:-1]:
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        else:
            problems.append(Problem("error", "prompt", "prompt is missing and chosen/rejected do not share a "
                                                       "prompt; add a prompt column"))
            return None
    if prompt is None:
        return None
    chosen, rejected = _strip_prompt(prompt, chosen), _strip_prompt(prompt, rejected)
    chosen = _answer(chosen, "chosen", problems)
    rejected = _answer(rejected, "rejected", problems)
    if chosen is None or rejected is None:
        return None
    if chosen == rejected:
        problems.append(Problem("error", "rejected", "chosen and rejected are identical, so the pair teaches "
                                                     "nothing; fix one answer or remove the row", PREF_STAGES))
    toolcalls.check_calls(chosen, tools, "chosen", problems)   # a rejected answer may call wrongly on purpose
    out = {"prompt": _system(row, prompt), "chosen": chosen, "rejected": rejected}
    if tools:
        out["tools"] = tools
    return out


def _n_preference(row, problems):
    prompt = _side(row["prompt"], "prompt", problems, "user") if row.get("prompt") is not None else None
    if prompt is None and "prompt" in row and row["prompt"] is None:
        problems.append(Problem("error", "prompt", "prompt is missing; every row needs it"))
        return None
    return _pair(row, problems, prompt)


def _n_sharegpt_preference(row, problems):
    key = "conversations" if "conversations" in row else "messages"
    prompt = _side(row.get(key), key, problems, "user", sharegpt=key == "conversations")
    return _pair(row, problems, prompt, sharegpt=key == "conversations")


def parse_label(value):
    """True / False from booleans, 0/1 and thumbs-up/down style strings; None when not a label."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_LABELS:
            return True
        if text in FALSE_LABELS:
            return False
    return None


def _label(row, problems):
    label = parse_label(row.get("label"))
    if label is None:
        shown = json.dumps(row.get("label"), ensure_ascii=False, default=str)[:40]
        problems.append(Problem("error", "label", f"label must be true or false (or 1/0), got {shown}; mark the "
                                                  "answer good (true) or bad (false)"))
    return label


def _kto_row(row, prompt, completion, label, tools):
    out = {"prompt": _system(row, prompt), "completion": completion, "label": label}
    if tools:
        out["tools"] = tools
    return out


def _n_kto(row, problems):
    prompt = _side(row.get("prompt"), "prompt", problems, "user")
    completion = _answer(_side(row.get("completion"), "completion", problems, "assistant"), "completion",
                         problems)
    label = _label(row, problems)
    tools = _tools(row, problems)
    if prompt is None or completion is None or label is None:
        return None
    return _kto_row(row, prompt, completion, label, tools)


def _n_kto_messages(row, problems):
    """A whole conversation plus a label: the last turn is the labelled answer, the turns before it the prompt
    (TRL's conversational KTO rows split the same way)."""
    key = "messages" if "messages" in row else "conversations"
    value = row.get(key)
    first = value[0] if isinstance(value, list) and value else None
    sharegpt = isinstance(first, dict) and ("from" in first or "value" in first) and "role" not in first
    messages = (norm_sharegpt if sharegpt else norm_messages)(value, key, problems)
    label = _label(row, problems)
    tools = _tools(row, problems)
    if messages is None:
        return None
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        problems.append(Problem("error", f"{key}[{last}]", f"the conversation ends with a {messages[last]['role']} "
                                "turn, but with a label column its last turn is the answer being labelled; end "
                                "it with the assistant answer"))
        return None
    if not any(m["role"] in ("user", "tool") for m in messages[:last]):
        problems.append(Problem("error", key, "the conversation has no user turn before the labelled answer, so "
                                              "there is no prompt; add the user message"))
        return None
    if label is None:
        return None
    return _kto_row(row, messages[:last], messages[last:], label, tools)


def _n_text(row, problems):
    """One raw-text document; a folder's rows say which file they came from (source), so a problem names it."""
    before = len(problems)
    text = _text(row, "text", problems)
    source = row.get("source")
    if source and len(problems) > before:
        problems[before:] = [Problem(p.severity, p.field, f"{p.message} (in {source})", p.stages)
                             for p in problems[before:]]
    if text is None:
        return None
    return {"text": text, "source": source} if source else {"text": text}


_CONV = ("messages", "conversations")
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("messages", "OpenAI chat messages", Kind.CHAT, _n_messages, (*_CONV, "system", "tools")),
    Format("sharegpt", "ShareGPT conversations (from/value)", Kind.CHAT, _n_sharegpt, (*_CONV, "system", "tools")),
    Format("alpaca", "Alpaca instruction/input/output", Kind.CHAT, _n_alpaca,
           ("instruction", "input", "output", "system", "history")),
    Format("prompt_completion", "prompt/completion", Kind.CHAT, _n_prompt_completion,
           ("prompt", "completion", "system")),
    Format("preference", "preference pairs (prompt/chosen/rejected)", Kind.PREFERENCE, _n_preference,
           ("prompt", "chosen", "rejected", "system", "tools")),
    Format("sharegpt_preference", "ShareGPT preference pairs (conversations/chosen/rejected)", Kind.PREFERENCE,
           _n_sharegpt_preference, (*_CONV, "chosen", "rejected", "system", "tools")),
    Format("kto", "KTO (prompt/completion/label)", Kind.KTO, _n_kto,
           ("prompt", "completion", "label", "system", "tools")),
    Format("kto_messages", "KTO conversations (messages/label)", Kind.KTO,
           _n_kto_messages, (*_CONV, "label", "system", "tools")),
    Format("text", "raw text (documents)", Kind.TEXT, _n_text, ("text", "source")),
)}


def ignored_column(fmt: str, column: str) -> str | None:
    """The warning for a column the format does not read (None when it reads it)."""
    spec = FORMATS[fmt]
    if column in spec.columns:
        return None
    purpose = COLUMN_PURPOSES.get(column)
    if column == "label" and spec.kind != Kind.KTO:
        use = ("labels only count with one answer per row: KTO reads prompt+completion+label or messages+label, "
               "so drop the column or reshape the rows")
    elif column == "tools":
        use = ("only conversation and preference formats pass tools to the chat template; use the messages "
               "format if the rows call functions")
    elif column in METADATA_COLUMNS:
        use = "nothing to do if it is only metadata"
    elif purpose is None:
        use = "map it onto a column the format reads if it holds training text, or drop it"
    else:
        use = "map it onto a column the format reads if it should be trained, or drop it"
    what = f" (it looks like {purpose})" if purpose else ""
    return (f"column '{column}' is not read by the {spec.label} format, so its values are left out of "
            f"training{what}; {use}")


def format_label(name: str | None, default: str | None = None) -> str | None:
    """What the report calls a format: its label, else `default`, else the name itself."""
    if name in FORMATS:
        return FORMATS[name].label
    return name if default is None else default


def to_stage(canon: dict, kind: str, stage: str) -> list[dict]:
    """The rows a stage trains on for one canonical row (0, 1 or, for KTO from pairs, 2 rows)."""
    if stage == Stage.SFT:
        if kind == Kind.CHAT:
            return [canon]
        if kind == Kind.PREFERENCE:
            row = {"messages": canon["prompt"] + canon["chosen"]}
        elif canon["label"]:
            row = {"messages": canon["prompt"] + canon["completion"]}
        else:
            return []              # an undesirable answer is not something to imitate
        if canon.get("tools"):
            row["tools"] = canon["tools"]
        return [row]
    if stage == Stage.PRETRAIN or kind == Kind.TEXT:
        return [canon] if stage == Stage.PRETRAIN and kind == Kind.TEXT else []
    if stage in (Stage.DPO, Stage.ORPO):
        return [canon] if kind == Kind.PREFERENCE else []
    if stage == Stage.KTO:
        if kind == Kind.KTO:
            return [canon]
        if kind == Kind.PREFERENCE:   # unpaired, as TRL does: chosen is desirable, rejected is not
            return [{"prompt": canon["prompt"], "completion": canon["chosen"], "label": True},
                    {"prompt": canon["prompt"], "completion": canon["rejected"], "label": False}]
    return []


def incompatibility(kind: str, fmt: str, stage: str) -> str | None:
    """Why data of this kind cannot feed this stage (one sentence), or None."""
    if stage in Kind(kind).stages:
        return None
    name = format_label(fmt)
    if stage == Stage.PRETRAIN:
        return (f"pretrain needs raw text, but this is {name} data; give .txt / .md files, a folder of them, or "
                "rows with a text column")
    if kind == Kind.TEXT:
        return (f"{stage} cannot train on raw text (no conversations or answers to learn from); use stage "
                "pretrain, or give chat or preference rows")
    if stage in (Stage.DPO, Stage.ORPO):
        what = "single answers labelled good or bad (KTO data); use stage kto or sft" if kind == Kind.KTO else \
            "a single answer per prompt (SFT data); use stage sft"
        return (f"{stage.upper()} needs a chosen and a rejected answer for each prompt, but this is {name} data "
                f"with {what}, or provide columns prompt, chosen and rejected")
    if stage == Stage.KTO:
        return (f"KTO needs answers labelled good or bad, but this is {name} data without labels; use stage "
                "sft, or provide columns prompt, completion and label (true/false), or messages and label")
    return f"{stage} cannot use {name} data"
