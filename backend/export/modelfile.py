"""The Ollama Modelfile of an export: FROM (and ADAPTER), a TEMPLATE in Ollama's Go template syntax that renders
conversations as the training chat template does, SYSTEM (the template's default system prompt), and a
PARAMETER stop for every end-of-turn token.

Why derived, not a table of families: a chat template is Jinja, Ollama's is Go's text/template; writing one Go
template per family by hand drifts from the template the model was trained with (a default system prompt, a
date line, a newline). The training template is rendered with marker contents instead, and each role's text
around its content (system, user, assistant) and the generation prompt are read off; the Go template repeats
them over Ollama's .Messages. Before it is written, the derived template is replayed in Python on conversations
with and without a system turn and must give the Jinja template's text exactly; where system turns cannot be
expressed that way (Gemma refuses them, Mistral folds them into the last user turn) the TEMPLATE covers
conversations without one and says so; where even that fails, no TEMPLATE is written (Ollama then takes the
template it recognises in the GGUF) and the Modelfile says why.

Ollama adds the beginning-of-text token itself when it tokenizes, so a leading BOS of the Jinja text is left out.
A test renders the written TEMPLATE with Go's own text/template, given the data Ollama passes, against
apply_chat_template for the chat templates of several families (tests/backend/export/test_modelfile.py).
"""
from __future__ import annotations

from dataclasses import dataclass

MARK = "\u27e6{}\u27e7"   # a marker content: brackets no template adds, and `| trim` keeps


@dataclass(frozen=True)
class Turns:
    """The text around each role's content, as the training template writes it."""
    system: tuple[str, str] | None     # None: system turns cannot be expressed
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str                    # what add_generation_prompt appends
    system_always: bool                # the template writes its system turn even without one (empty content)
    default_system: str                # the system text the template writes when a conversation has none
    prefix: str = ""                   # written once before everything (a BOS the tokenizer does not add)


def modelfile_text(tokenizer, from_line: str) -> str:
    """An Ollama Modelfile for the tokenizer's chat template (see the module docstring)."""
    lines = [f"# Ollama: ollama create my-model -f Modelfile\n{from_line}"]
    turns, note = derive_turns(tokenizer)
    if turns is None:
        lines.append(f"# no TEMPLATE: {note}; Ollama uses the chat template it recognises in the model")
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    else:
        if note:
            lines.append(f"# {note}")
        lines.append(f'TEMPLATE """{go_template(turns)}"""')
        if turns.default_system:
            lines.append(f'SYSTEM """{turns.default_system}"""')
        stops = stop_tokens(tokenizer, turns)
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def derive_turns(tokenizer) -> tuple[Turns | None, str]:
    """(the turns, a note) or (None, why not)."""
    if not getattr(tokenizer, "chat_template", None):
        return None, "the tokenizer has no chat template"
    try:
        plain = _jinja(tokenizer, _conversation(False))
    except Exception as error:  # noqa: BLE001 - a template that cannot render a plain conversation
        return None, f"the chat template does not render a plain conversation ({type(error).__name__})"
    try:
        with_system = _jinja(tokenizer, _conversation(True))
    except Exception:  # noqa: BLE001 - templates that refuse system turns (Gemma) raise
        with_system = None
    expected = _expected_texts(tokenizer)
    candidates = list(_candidates(plain, with_system))
    for turns in sorted(candidates, key=lambda t: t.system is None):   # with a system turn first
        if all(_replays(turns, messages, text) for messages, text in expected):
            notes = []
            if turns.system is None and any(_has_system(messages) for messages, _ in expected):
                notes.append("this chat template cannot be repeated per turn with a system message, so the "
                             "TEMPLATE covers conversations without one")
            if not all(_replays(turns, messages, text) for messages, text in _expected_texts(tokenizer, " ")):
                notes.append("this chat template trims the spaces around each message, which Ollama's template "
                             "language cannot: messages without outer spaces render the same")
            return turns, "; ".join(notes)
    return None, "the chat template cannot be repeated per turn in Ollama's template syntax"


def _replays(turns: Turns, messages: list[dict], text: str) -> bool:
    """The turns give the template's text for these messages (system turns only where the turns have them)."""
    if turns.system is None and _has_system(messages):
        return True
    return render(turns, messages, turns.default_system) == text


def go_template(turns: Turns) -> str:
    """Ollama's TEMPLATE: the system turn (from .System), then every user / assistant message, then the
    generation prompt."""
    parts = [_go(turns.prefix)]
    if turns.system is not None:
        before, after = (_go(text) for text in turns.system)
        block = f"{before}{{{{ .System }}}}{after}"
        parts.append(block if turns.system_always else f"{{{{ if .System }}}}{block}{{{{ end }}}}")
    user, assistant = [(_go(a), _go(b)) for a, b in (turns.user, turns.assistant)]
    parts.append(f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{user[0]}{{{{ .Content }}}}{user[1]}'
                 f'{{{{ else if eq .Role "assistant" }}}}{assistant[0]}{{{{ .Content }}}}{assistant[1]}'
                 f"{{{{ end }}}}{{{{ end }}}}")
    parts.append(_go(turns.generation))
    return "".join(parts)


def render(turns: Turns, messages: list[dict], system: str = "") -> str:
    """What Ollama renders with go_template(turns) for `messages` (the Modelfile's SYSTEM used when the
    conversation has no system turn, as Ollama does), replayed in Python."""
    own = [m["content"] for m in messages if m["role"] == "system"]
    text = turns.prefix
    system_text = "\n\n".join(own) if own else system
    if turns.system is not None and (system_text or turns.system_always):
        text += turns.system[0] + system_text + turns.system[1]
    for message in messages:
        if message["role"] in ("user", "assistant"):
            before, after = getattr(turns, message["role"])
            text += before + message["content"] + after
    return text + turns.generation


def stop_tokens(tokenizer, turns: Turns) -> list[str]:
    """Every special token that ends an assistant turn or starts the next user turn, and the end-of-text token."""
    specials = [t for t in (tokenizer.all_special_tokens or []) if t]
    specials += [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(t, "special", False)]
    after = turns.assistant[1] + turns.user[0]
    stops = sorted({t for t in specials if t in after}, key=after.index)
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


# ---------------------------------------------------------------- reading the template

def _conversation(with_system: bool) -> list[dict]:
    messages = [{"role": "user", "content": MARK.format("u1")}, {"role": "assistant", "content": MARK.format("a1")},
                {"role": "user", "content": MARK.format("u2")}]
    return ([{"role": "system", "content": MARK.format("s")}] if with_system else []) + messages


def _jinja(tokenizer, messages: list[dict]) -> str:
    """The training template's text, less the BOS that llama.cpp / Ollama add when they tokenize (only for a
    tokenizer that adds one to plain text: SmolLM2's bos_token is <|im_start|>, which its template writes)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def _has_system(messages: list[dict]) -> bool:
    return any(m["role"] == "system" for m in messages)


def _expected_texts(tokenizer, pad: str = "") -> list[tuple[list[dict], str]]:
    """The Jinja template's text for conversations of several shapes (those it refuses are left out); `pad`
    around every message."""
    u, a = f"{pad}What is 12 + 30?{pad}", f"{pad}42.{pad}"
    shapes = [[{"role": "user", "content": u}],
              [{"role": "user", "content": u}, {"role": "assistant", "content": a},
               {"role": "user", "content": f"{pad}And twice that?{pad}"}]]
    shapes += [[{"role": "system", "content": f"{pad}Be brief.{pad}"}, *shape] for shape in shapes]
    out = []
    for messages in shapes:
        try:
            out.append((messages, _jinja(tokenizer, messages)))
        except Exception:  # noqa: BLE001 - a shape the template refuses is not one to match
            continue
    return out


def _split(text: str, names: tuple[str, ...]) -> list[str] | None:
    """The text between the marker contents (before the first, between each, after the last)."""
    marks = [MARK.format(name) for name in names]
    at = [text.find(mark) for mark in marks]
    if -1 in at or at != sorted(at):
        return None
    pieces, start = [], 0
    for position, mark in zip(at, marks):
        pieces.append(text[start:position])
        start = position + len(mark)
    return pieces + [text[start:]]


def _candidates(plain: str, with_system: str | None):
    """Every consistent reading of the rendered conversations, the natural ones first: each turn's end closes
    it (user and assistant turns end alike where the template allows), the next turn's start is the shortest."""
    pieces = _split(plain, ("u1", "a1", "u2"))
    if pieces is None:
        return
    head, user_assistant, assistant_user, tail = pieces
    system_pieces = _split(with_system, ("s", "u1", "a1", "u2")) if with_system else None
    options = []
    for j in range(1, min(len(head), len(assistant_user)) + 1):
        user_start = assistant_user[len(assistant_user) - j:]
        if not head.endswith(user_start):
            continue
        assistant_end = assistant_user[: len(assistant_user) - j]
        for k in range(0, len(_common_prefix(user_assistant, tail)) + 1):
            user_end = user_assistant[:k]
            # natural first: both turns end alike, a turn starts with its role tag ("<|im_start|>user"), shortest
            key = (user_end != assistant_end or not user_end, not user_start.startswith(("<", "[")), j, -k)
            options.append((key, user_start, user_end, assistant_end, user_assistant[k:], tail[k:]))
    for _, user_start, user_end, assistant_end, assistant_start, generation in sorted(options, key=lambda o: o[0]):
        user, assistant = (user_start, user_end), (assistant_start, assistant_end)
        default_head = head[: len(head) - len(user_start)]    # what a conversation without a system turn starts with
        if system_pieces is not None and system_pieces[1].endswith(user_start):
            system_end = system_pieces[1][: len(system_pieces[1]) - len(user_start)]
            for prefix in dict.fromkeys(("", _common_prefix(default_head, system_pieces[0]))):
                system = (system_pieces[0][len(prefix):], system_end)
                rest = default_head[len(prefix):]
                default = _default_system(rest, system)
                if default is not None or not rest:
                    yield Turns(system, user, assistant, generation, system_always=default == "",
                                default_system=default or "", prefix=prefix)
        yield Turns(None, user, assistant, generation, False, "", prefix=default_head)


def _default_system(head: str, system: tuple[str, str]) -> str | None:
    """The system text in `head` (a conversation without a system turn, before its first user turn) when head is
    one system turn ("" for an empty one), else None."""
    before, after = system
    if head.startswith(before) and head.endswith(after) and len(head) >= len(before) + len(after):
        return head[len(before): len(head) - len(after)]
    return None


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def _go(text: str) -> str:
    """Literal text inside a Go template: "{{" would open an action."""
    return text.replace("{{", '{{ "{{" }}')
