"""Playground tab: one conversation answered side by side by base / adapter / merged (or base / job A / job B).

Every column gets the same system prompt, chat template, sampling settings and seed (greedy by default, so the
differences come from the weights). Answers stream token by token, one column after the other, with time to
first token, tokens/s and length under each column. Each column keeps its own history (the user turns are
shared, each column sees its own previous answers). The merge verification (adapter vs merged logits) is shown
under the merged column. Batch compare runs a list of prompts (typed, uploaded or the job's eval split) through
the columns into one table with a CSV download.

Handlers are plain functions (tested without a browser); `build()` makes the components, `wire()` connects them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

from backend.serve.chat import AnswerStats, GenerationSettings
from ui.common import UserError, md_escape, pick, readable, usable_job_choices

N_COLUMNS = 3
DEFAULT_TITLES = ("base", "adapter", "merged")
BATCH_SOURCES = ("typed", "uploaded file", "eval split")
SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))
# Seconds between two streamed updates of a column (its final answer is always sent). Each update costs the
# server a post-process + diff + JSON of the columns and the browser a Markdown render, on the cores that
# generate: one update per token held the columns near 10 tokens/s on 2 cores (bench/playground.py
# --streaming measures it); 0.2 s (5 updates/s) still reads as live streaming.
STREAM_INTERVAL_S = 0.2

# ---------------------------------------------------------------- settings


def settings_from(*values) -> GenerationSettings:
    """The controls' values (in GenerationSettings field order) -> settings; every bad value in one sentence."""
    kwargs = {}
    for f, value in zip(fields(GenerationSettings), values):
        if f.type in (str, "str"):
            kwargs[f.name] = str(value or "")
            continue
        if value is None or value == "":
            raise UserError(f"{f.name.replace('_', ' ')}: give a value "
                            f"({f.metadata.get('min')} to {f.metadata.get('max')})")
        kwargs[f.name] = int(value) if f.type in (int, "int") else float(value)
    settings = GenerationSettings(**kwargs)
    problems = settings.problems()
    if problems:
        raise UserError("; ".join(p.replace("_", " ") for p in problems))
    return settings


# ---------------------------------------------------------------- the session and its columns


def open_for(job_id: str | None, compare: bool = False, job_b: str | None = None):
    """The loaded backend session for the chosen job (or jobs A and B in compare mode)."""
    from backend.serve import playground

    if not job_id:
        raise UserError("Pick a job first (only jobs with a saved adapter or checkpoint are listed).")
    if compare:
        if not job_b:
            raise UserError("Compare mode: pick job B as well.")
        if job_b == job_id:
            raise UserError("Compare mode: pick two different jobs.")
        return playground.open_session(job_id, job_b)
    return playground.open_session(job_id)


def titles(session) -> list[str]:
    return [c.title for c in session.columns]


def check_markdown(session) -> str:
    """The merge verification under the merged column."""
    check = getattr(session, "check", None)
    if getattr(session, "check_skipped", ""):
        return f"_{md_escape(session.check_skipped)}_"
    if check is None:
        return "_merge verification: only for one job (base / adapter / merged)_" \
            if session is not None and len(session.job_ids) > 1 else ""
    return ("" if check.ok else "⚠️ ") + f"**merge check**: {md_escape(check.summary())}"


def short_title(title: str, width: int = 40) -> str:
    """A chatbot label that fits its column (the full title is in the session line above)."""
    return title if len(title) <= width else title[:width - 1].rstrip() + "…"


def column_label(title: str) -> str:
    """The chatbot's own label: the column's role only ("merged", "A · job-id"); a narrow column's label is cut by
    the browser, so the whole title is the column heading above it (column_heading), which wraps."""
    head = title.split(" (")[0] if title.startswith(("A · ", "B · ")) else title.split(" · ")[0]
    return short_title(head, 24)


def column_heading(title: str) -> str:
    """The full column title as Markdown (wraps in a narrow column instead of being cut)."""
    role, sep, rest = title.partition(" · ")
    return f"**{md_escape(role)}**" + (f" · {md_escape(rest)}" if sep else "")


def session_markdown(session) -> str:
    lines = [f"**{' vs '.join(session.job_ids)}** · columns: " + " | ".join(md_escape(t) for t in titles(session))]
    lines += [f"- {md_escape(note)}" for note in session.notes]
    return "\n".join(lines)


def stats_line(stats: AnswerStats | None) -> str:
    if stats is None:
        return ""
    prefix = "" if stats.done else "⏳ "
    return f"{prefix}{stats.summary()} · {len(stats.text)} chars"


def new_histories() -> list[list[dict]]:
    return [[] for _ in range(N_COLUMNS)]


def _copy(histories) -> list[list[dict]]:
    return copy.deepcopy(list(histories or new_histories()))


def answer_turn(session, histories, settings: GenerationSettings, message: str | None = None,
                interval: float | None = None):
    """Add `message` (None: answer the existing last user turn again) and stream every column, one after the
    other. Yields (histories, stats lines); each column sees only its own previous answers.

    Updates are coalesced to at most one per `interval` seconds (STREAM_INTERVAL_S; 0 = one per streamed
    piece) plus each column's final one: every update is post-processed, serialised and sent by Gradio's
    server while the model generates on the same cores (see STREAM_INTERVAL_S)."""
    import time

    interval = STREAM_INTERVAL_S if interval is None else interval
    histories = _copy(histories)
    while len(histories) < len(session.columns):
        histories.append([])
    if message is not None:
        for history in histories:
            history.append({"role": "user", "content": message})
    lines: list[str] = [""] * len(session.columns)
    for i, column in enumerate(session.columns):
        history = histories[i]
        if not history or history[-1]["role"] != "user":
            raise UserError("Nothing to answer: send a message first.")
        asked = list(history)
        history.append({"role": "assistant", "content": ""})
        lines[i] = "⏳ waiting for the first token"
        yield _copy(histories), list(lines)
        shown_at = time.perf_counter()
        for stats in session.stream(column.key, asked, settings):
            history[-1] = {"role": "assistant", "content": stats.text}
            lines[i] = stats_line(stats)
            now = time.perf_counter()
            if stats.done or now - shown_at >= interval:
                shown_at = now
                yield _copy(histories), list(lines)
        if not history[-1]["content"]:
            history[-1] = {"role": "assistant", "content": "(empty answer)"}
            yield _copy(histories), list(lines)


def streaming_update(tab, histories, lines) -> dict:
    """The outputs of one streamed update: the histories State and the column being streamed (columns answer in
    order, so it is the last one with a stats line), not every chat, title and line again."""
    live = max((i for i, line in enumerate(lines) if line), default=0)
    return {tab.histories: histories, tab.chats[live]: shown(histories[live]), tab.stats[live]: lines[live]}


def shown(history: list[dict]) -> list[dict]:
    """A column's conversation as the chat shows it: each tool call as a call (function and arguments) and each
    <think> section as reasoning, in collapsible boxes; the history itself keeps the model's raw text."""
    import json

    from backend.serve.answer_parts import answer_parts

    out = []
    for message in history:
        if message["role"] != "assistant" or not any(tag in message["content"] for tag in _SECTION_TAGS):
            out.append(message)
            continue
        for part in answer_parts(message["content"]):
            if part.kind == "call":
                arguments = json.dumps(part.arguments, ensure_ascii=False, indent=1)
                out.append({"role": "assistant", "content": f"```json\n{arguments}\n```",
                            "metadata": {"title": f"🛠️ call {part.name}", "status": "done"}})
            elif part.kind == "broken_call":
                out.append({"role": "assistant", "content": f"```\n{part.text}\n```",
                            "metadata": {"title": f"⚠️ unreadable tool call: {part.problem}", "status": "done"}})
            elif part.kind == "reasoning":
                out.append({"role": "assistant", "content": part.text,
                            "metadata": {"title": "💭 reasoning", "status": "done"}})
            else:
                out.append({"role": "assistant", "content": part.text})
    return out


_SECTION_TAGS = ("<tool_call>", "<think>", "[TOOL_CALLS]", "<|python_tag|>")


def tools_for(job_id: str | None) -> str:
    """The tools box for a newly picked job: the schemas its training data declares ('' when none)."""
    from backend.serve import playground

    try:
        return playground.job_tools(job_id) if job_id else ""
    except Exception:  # noqa: BLE001 - a job without a readable config: no tools to offer
        return ""


def drop_last_answers(histories) -> list[list[dict]]:
    """Regenerate: every column's last answer removed (the shared last user turn stays)."""
    histories = _copy(histories)
    for history in histories:
        if history and history[-1]["role"] == "assistant":
            history.pop()
    if not any(h and h[-1]["role"] == "user" for h in histories):
        raise UserError("Nothing to regenerate yet: send a message first.")
    return histories


# ---------------------------------------------------------------- batch compare


def batch_prompts(source: str, text: str | None, file_path: str | None, job_id: str | None, limit: int = 50):
    from backend.serve import playground

    if source == "uploaded file":
        if not file_path:
            raise UserError("Upload a prompts file first (.txt one per line, .csv / .jsonl with a `prompt` column).")
        return playground.prompts_from_file(file_path)
    if source == "eval split":
        if not job_id:
            raise UserError("Pick a job first.")
        return playground.eval_prompts(job_id, limit=int(limit or 50))
    prompts = playground.prompts_from_text(text or "")
    if not prompts:
        raise UserError("Type at least one prompt (one per line).")
    return prompts


def batch_table(rows: list[dict], session) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) for the table: prompt, reference (when any row has one), one column per model."""
    keys = [c.key for c in session.columns]
    with_reference = any(r.get("reference") for r in rows)
    headers = ["prompt"] + (["reference"] if with_reference else []) + titles(session)
    body = [[r["prompt"]] + ([r.get("reference", "")] if with_reference else []) + [r.get(k, "") for k in keys]
            for r in rows]
    return headers, body


def run_batch(job_id, compare, job_b, source, text, file_path, limit, setting_values, progress=None):
    """-> (headers, rows, csv path, message)."""
    from backend.serve import playground

    settings = settings_from(*setting_values)
    prompts = batch_prompts(source, text, file_path, job_id, limit)
    session = open_for(job_id, compare, job_b)
    rows = playground.batch_compare(session, prompts, settings, progress)
    path = playground.write_batch_csv(rows, session.job_ids[0])
    headers, body = batch_table(rows, session)
    return headers, body, str(path), f"{len(rows)} prompts × {len(session.columns)} columns · CSV: `{path.name}`"


# ---------------------------------------------------------------- gradio


@dataclass
class PlaygroundTab:
    job: object = None
    compare: object = None
    job_b: object = None
    load_btn: object = None
    info: object = None
    headings: list = field(default_factory=list)    # three gr.Markdown: the full column titles (they wrap)
    chats: list = field(default_factory=list)       # three gr.Chatbot (labelled with the column's role only)
    stats: list = field(default_factory=list)       # three gr.Markdown under them
    check: object = None                            # merge verification (under the merged column)
    message: object = None
    send_btn: object = None
    regenerate_btn: object = None
    clear_btn: object = None
    status: object = None
    settings: dict = field(default_factory=dict)    # GenerationSettings field -> control
    histories: object = None                        # gr.State: one message list per column
    pending: object = None                          # gr.State: the message being answered
    batch_source: object = None
    batch_text: object = None
    batch_file: object = None
    batch_limit: object = None
    batch_btn: object = None
    batch_table: object = None
    batch_csv: object = None
    batch_status: object = None

    def setting_controls(self) -> list:
        return [self.settings[name] for name in SETTING_NAMES]


def _safe_choices() -> list:
    try:
        return usable_job_choices()
    except Exception:  # noqa: BLE001 - an unreadable workspace must not stop the app from building
        return []


def _setting_control(gr, f):
    meta, label = f.metadata, f.name.replace("_", " ")
    if f.name == "system_prompt":
        return gr.Textbox(value=f.default, label=label, info=meta.get("help"), lines=2,
                          placeholder="(none: the chat template's default)")
    if f.name == "tools":
        return gr.Code(value=f.default, label=label, language="json", lines=3, max_lines=12, interactive=True,
                       elem_classes=["ls-pg-tools"])
    if f.name in ("max_new_tokens", "seed"):
        return gr.Number(value=f.default, label=label, info=meta.get("help"), precision=0,
                         minimum=meta.get("min"), maximum=meta.get("max"))
    step = 0.05 if f.name != "temperature" else 0.1
    return gr.Slider(minimum=meta["min"], maximum=meta["max"], value=f.default, step=step, label=label,
                     info=meta.get("help"))


def build(gr) -> PlaygroundTab:
    tab = PlaygroundTab()
    choices = _safe_choices()
    with gr.Row():
        tab.job = gr.Dropdown(choices=choices, value=pick(choices, None), label="job",
                              info="A finished job, or a running / stopped one with a checkpoint.", scale=4,
                              elem_classes=["ls-pg-job"])
        tab.compare = gr.Checkbox(value=False, label="compare two jobs",
                                  info="Job A's adapter next to job B's (same base model).", scale=1)
        tab.job_b = gr.Dropdown(choices=choices, value=pick(choices, None, 1), label="job B", visible=False,
                                scale=3)
        tab.load_btn = gr.Button("Load", scale=1)
    tab.info = gr.Markdown("Pick a job and send a message; the models load on the first message (up to ~30 s "
                           "on a CPU).", elem_classes=["ls-pg-info"])
    # not equal_height: that stretches the merged column (it also holds the merge check) and shifts its chat
    with gr.Row(equal_height=False):
        for i in range(N_COLUMNS):
            with gr.Column(min_width=260):
                tab.headings.append(gr.Markdown(f"**{DEFAULT_TITLES[i]}**", elem_classes=[f"ls-col-title-{i}",
                                                                                         "ls-col-title"]))
                tab.chats.append(gr.Chatbot(label=DEFAULT_TITLES[i], height=380, buttons=["copy", "copy_all"],
                                            elem_classes=[f"ls-col-{i}"]))
                tab.stats.append(gr.Markdown(elem_classes=[f"ls-stats-{i}"]))
                if i == N_COLUMNS - 1:
                    tab.check = gr.Markdown(elem_classes=["ls-merge-check"])
    with gr.Row():
        tab.message = gr.Textbox(label="message", placeholder="Who are you?", scale=6, lines=1,
                                 elem_classes=["ls-pg-message"])
        tab.send_btn = gr.Button("Send", variant="primary", scale=1, elem_classes=["ls-pg-send"])
        tab.regenerate_btn = gr.Button("Regenerate", scale=1, elem_classes=["ls-pg-regenerate"])
        tab.clear_btn = gr.Button("Clear", scale=1, elem_classes=["ls-pg-clear"])
    tab.status = gr.Markdown(elem_classes=["ls-pg-status"])
    with gr.Accordion("Generation settings (the same in every column)", open=False):
        with gr.Row():
            for f in fields(GenerationSettings):
                tab.settings[f.name] = _setting_control(gr, f)
    with gr.Accordion("Batch compare", open=False):
        with gr.Row():
            tab.batch_source = gr.Radio(list(BATCH_SOURCES), value=BATCH_SOURCES[0], label="prompts from",
                                        info="The eval split shows the reference answer next to each model's.")
            tab.batch_limit = gr.Number(value=20, precision=0, minimum=1, maximum=200, label="eval rows (at most)")
        tab.batch_text = gr.Textbox(label="prompts, one per line", lines=4,
                                    value="Who are you?\nWhat is the capital of Italy?")
        tab.batch_file = gr.File(label="prompts file (.txt, .csv, .jsonl, .json)", type="filepath",
                                 file_types=[".txt", ".csv", ".jsonl", ".json"], visible=False)
        tab.batch_btn = gr.Button("Run batch", elem_classes=["ls-batch-run"])
        tab.batch_status = gr.Markdown()
        tab.batch_table = gr.Dataframe(label="answers", wrap=True, interactive=False, elem_classes=["ls-batch-table"])
        tab.batch_csv = gr.File(label="CSV", interactive=False, visible=False, elem_classes=["ls-batch-csv"])
    tab.histories = gr.State(new_histories())
    tab.pending = gr.State("")
    return tab


def wire(gr, tab: PlaygroundTab, tab_item=None) -> None:
    """Connect the handlers; `tab_item` (the gr.Tab) refreshes the job lists when selected."""

    def refresh_jobs(current, current_b):
        choices = usable_job_choices()
        return (gr.update(choices=choices, value=pick(choices, current)),
                gr.update(choices=choices, value=pick(choices, current_b, 1)))

    if tab_item is not None:
        tab_item.select(refresh_jobs, [tab.job, tab.job_b], [tab.job, tab.job_b], show_progress="hidden")
    tab.compare.change(lambda on: gr.update(visible=bool(on)), tab.compare, tab.job_b, show_progress="hidden")

    chat_outputs = [tab.histories, *tab.chats, *tab.stats, tab.check, tab.info, tab.status, *tab.headings]

    def view(session, histories, lines, status, check=None):
        full = titles(session) if session is not None else list(DEFAULT_TITLES)
        out = {tab.histories: histories, tab.status: status}
        out.update({chat: gr.update(value=shown(h), label=column_label(t))
                    for chat, h, t in zip(tab.chats, histories, full)})
        out.update({heading: column_heading(t) for heading, t in zip(tab.headings, full)})
        out.update(zip(tab.stats, lines))
        if check is not None:
            out[tab.check] = check
        if session is not None:
            out[tab.info] = session_markdown(session)
        return out

    def fail(histories, message):
        gr.Warning(message)
        return {tab.status: f"⚠️ {message}"}

    def converse(job_id, compare, job_b, histories, message, *values, regenerate=False):
        try:
            settings = settings_from(*values)
            if regenerate:
                histories = drop_last_answers(histories)
                message = None
            else:
                message = (message or "").strip()
                if not message:
                    raise UserError("Type a message first.")
            yield {tab.status: "Loading the models (the first time for a job takes up to ~30 s on a CPU)…"}
            session = open_for(job_id, compare, job_b)
            if session.check is not None and not session.check.ok:
                gr.Warning(f"Merge check: {session.check.summary()}")
            shown = None
            for number, (shown, lines) in enumerate(answer_turn(session, histories, settings, message)):
                # the first update draws everything; later ones carry only the column that changed
                yield view(session, shown, lines, "answering…", check_markdown(session)) if number == 0 else \
                    streaming_update(tab, shown, lines)
            if shown is not None:
                yield view(session, shown, lines, "", check_markdown(session))
        except Exception as error:  # noqa: BLE001 - one sentence in the page, the trace in the log
            import logging
            logging.getLogger("lorastudio.ui").exception("playground turn failed")
            yield fail(histories, readable(error))

    inputs = [tab.job, tab.compare, tab.job_b, tab.histories, tab.pending, *tab.setting_controls()]
    # the typed message moves to a State and the box empties at once; then the columns answer it
    for trigger in (tab.send_btn.click, tab.message.submit):
        trigger(lambda text: ("", text), tab.message, [tab.message, tab.pending], show_progress="hidden",
                queue=False).then(converse, inputs, chat_outputs, show_progress="minimal")

    def regenerate(*args):
        yield from converse(*args, regenerate=True)

    tab.regenerate_btn.click(regenerate, inputs, chat_outputs, show_progress="minimal")

    def clear():
        return {tab.histories: new_histories(), **{chat: [] for chat in tab.chats},
                **{stats: "" for stats in tab.stats}, tab.status: "Cleared."}

    tab.clear_btn.click(clear, None, chat_outputs, show_progress="hidden")
    for chat in tab.chats:   # a column's own trash icon clears the whole conversation (histories stay aligned)
        chat.clear(clear, None, chat_outputs, show_progress="hidden")

    def load(job_id, compare, job_b):
        try:
            session = open_for(job_id, compare, job_b)
        except Exception as error:  # noqa: BLE001
            return fail(None, readable(error))
        if session.check is not None and not session.check.ok:
            gr.Warning(f"Merge check: {session.check.summary()}")
        empty = new_histories()
        return view(session, empty, [""] * N_COLUMNS, "Loaded: send a message.", check_markdown(session))

    tab.load_btn.click(load, [tab.job, tab.compare, tab.job_b], chat_outputs, show_progress="minimal").then(
        lambda job_id, tools: tools if str(tools or "").strip() else tools_for(job_id), [tab.job, tab.settings["tools"]],
        tab.settings["tools"], show_progress="hidden")
    # a different job (or mode) starts a new conversation
    for control in (tab.job, tab.compare, tab.job_b):
        control.input(clear, None, chat_outputs, show_progress="hidden")
    # ... and brings the functions its data declares into the tools box
    tab.job.input(tools_for, tab.job, tab.settings["tools"], show_progress="hidden")

    tab.batch_source.change(lambda s: (gr.update(visible=s == "typed"), gr.update(visible=s == "uploaded file")),
                            tab.batch_source, [tab.batch_text, tab.batch_file], show_progress="hidden")

    def batch(job_id, compare, job_b, source, text, file_path, limit, *values, progress=gr.Progress()):
        try:
            headers, body, path, message = run_batch(
                job_id, compare, job_b, source, text, file_path, limit, values,
                progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as error:  # noqa: BLE001
            import logging
            logging.getLogger("lorastudio.ui").exception("batch compare failed")
            message = readable(error)
            gr.Warning(message)
            return {tab.batch_status: f"⚠️ {message}"}
        import pandas as pd
        widths = [f"{100 / len(headers):.0f}%"] * len(headers)   # every column visible, no sideways scroll
        return {tab.batch_table: gr.update(value=pd.DataFrame(body, columns=headers), column_widths=widths),
                tab.batch_csv: gr.update(value=path, visible=True), tab.batch_status: message}

    tab.batch_btn.click(batch, [tab.job, tab.compare, tab.job_b, tab.batch_source, tab.batch_text, tab.batch_file,
                                tab.batch_limit, *tab.setting_controls()],
                        [tab.batch_table, tab.batch_csv, tab.batch_status])
