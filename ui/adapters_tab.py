"""Adapters tab: the registry of every adapter (trained, imported, composed) with its provenance; composing
adapters of one base into a new one; whether a composition kept its parents' skills; importing a peft folder;
notes, tags and a delete that says first what came from an adapter.

Handlers are plain functions (tested without a browser); `build()` makes the components, `wire()` connects them.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

from backend import adapters
from backend.adapters.compose import COMBINATION_HELP, COMBINATIONS, DEFAULT_DENSITY, Composition
from ui.common import UserError, md_escape, pick

ALL = "all"


def filter_choices() -> dict:
    """The values each filter may take, from the entries there are."""
    found = adapters.entries()
    return {name: [ALL, *sorted({getattr(e, name) for e in found})] for name in ("base", "method", "stage", "origin")}


def listing(base=ALL, method=ALL, stage=ALL, origin=ALL, tag: str = "") -> tuple[str, list[tuple[str, str]]]:
    """(the table as HTML, the (label, id) choices) of the entries that pass the filters."""
    def given(value):
        return None if value in (None, "", ALL) else value
    found = adapters.entries(base=given(base), method=given(method), stage=given(stage), origin=given(origin),
                             tag=(tag or "").strip().lower() or None)
    rows = "".join(
        f"<tr><td>{html.escape(e.id)}</td><td>{html.escape(e.name)}</td><td>{e.origin}</td>"
        f"<td>{html.escape(e.base)}</td><td>{e.method}</td><td>{e.stage}</td><td>{e.rank or '?'}</td>"
        f"<td>{adapters.size_text(e.size_bytes)}</td><td>{html.escape(' '.join('#' + t for t in e.tags))}</td></tr>"
        for e in found)
    table = ("<table class='ls-adapters'><tr><th>id</th><th>name</th><th>origin</th><th>base</th><th>method</th>"
             f"<th>stage</th><th>rank</th><th>size</th><th>tags</th></tr>{rows}</table>" if found
             else "<p>No adapter matches. Train a job, or import or compose one below.</p>")
    return table, [(f"{e.id} · {e.origin} · {e.name or e.base}", e.id) for e in found]


def card(adapter_id: str | None) -> str:
    if not adapter_id:
        return "Pick an adapter to see its provenance."
    entry = adapters.get(adapter_id)
    return "```\n" + adapters.describe(entry) + "\n```"


def parse_weights(text: str, count: int) -> tuple[float, ...]:
    """'0.6, 0.4' -> (0.6, 0.4); empty = equal weights."""
    text = (text or "").replace(",", " ").strip()
    if not text:
        return tuple(1 / count for _ in range(count)) if count else ()
    try:
        weights = tuple(float(part) for part in text.split())
    except ValueError:
        raise UserError(f"weights: '{text}' is not a list of numbers; write one per adapter, e.g. 0.5, 0.5") from None
    return weights


def run_compose(parent_ids, weights_text: str, combination: str, density, name: str, progress=None):
    from backend.adapters.compose import compose

    parent_ids = list(parent_ids or [])
    takes_density = COMBINATIONS.get(combination, (False, False))[1]
    spec = Composition(parents=tuple(parent_ids), weights=parse_weights(weights_text, len(parent_ids)),
                       combination=combination, density=float(density) if takes_density and density else None,
                       name=name or "")
    return compose(spec, progress=progress)


def skills_view(composed_id: str | None, run: bool = False, progress=None) -> tuple[str, object]:
    """(markdown table, plotly figure or None) of how the composition scores on each parent's held-out rows."""
    from backend.adapters import skills

    if not composed_id:
        return "Pick a composed adapter.", None
    if not adapters.get(composed_id).parents:
        return "This adapter is not a composition: the skills check compares a composition with its parents.", None
    found = skills.kept_skills(composed_id, progress=progress) if run else skills.saved_skills(composed_id)
    if not found:
        return "Not checked yet: press **Check the parents' skills**.", None
    lines = ["| parent's rows | rows | loss: base | loss: parent | loss: composed | exact: parent | exact: composed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in found:
        if not s.rows:
            lines.append(f"| {s.parent} | 0 | {md_escape('; '.join(s.notes))} | | | | |")
            continue
        em = s.exact_match
        lines.append(f"| {s.parent} ({md_escape(s.dataset)}) | {s.rows} | {_n(s.loss.get('base'))} | "
                     f"{_n(s.loss.get('parent'))} | **{_n(s.loss.get('composed'))}** | {_pct(em.get('parent'))} | "
                     f"**{_pct(em.get('composed'))}** |")
    text = ("Loss = mean negative log-likelihood per answer token on the parent's own held-out rows (lower is "
            "better); exact = greedy answers equal to the reference.\n\n" + "\n".join(lines))
    return text, _figure(found)


def _figure(found):
    import plotly.graph_objects as go
    scored = [s for s in found if s.rows]
    figure = go.Figure()
    for key, colour in (("base", "#9e9e9e"), ("parent", "#1565c0"), ("composed", "#ef6c00")):
        figure.add_bar(name=key, x=[s.parent for s in scored], y=[s.loss.get(key) for s in scored],
                       marker_color=colour)
    figure.update_layout(barmode="group", yaxis_title="loss on the parent's held-out rows", height=320,
                         margin=dict(l=40, r=10, t=30, b=40))
    return figure


def _n(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def delete_request(adapter_id: str | None) -> tuple[str, str | None]:
    """(what the page says, the id awaiting confirmation): the first click asks, naming what came from it."""
    if not adapter_id:
        return "Pick an adapter first.", None
    adapters.get(adapter_id)
    problem = adapters.delete_problem(adapter_id)
    ask = f"Delete adapter **{adapter_id}** with its run folder and exports? This cannot be undone."
    return (f"⚠️ {md_escape(problem)}. {ask}" if problem else ask), adapter_id


def delete_confirmed(adapter_id: str | None, asked: str | None) -> str:
    from workers import control
    if not adapter_id or adapter_id != asked:
        raise UserError("press Delete first, then confirm the same adapter")
    control.delete_job(adapter_id)
    return f"Adapter {adapter_id} deleted."


# ---------------------------------------------------------------- components and wiring

@dataclass
class AdaptersTab:
    base: object = None
    method: object = None
    stage: object = None
    origin: object = None
    tag: object = None
    table: object = None
    selected: object = None
    card: object = None
    note: object = None
    tags: object = None
    save_btn: object = None
    delete_btn: object = None
    confirm_btn: object = None
    delete_asked: object = None
    status: object = None
    parents: object = None
    weights: object = None
    combination: object = None
    density: object = None
    compose_name: object = None
    compose_btn: object = None
    skills_btn: object = None
    skills: object = None
    skills_chart: object = None
    import_folder: object = None
    import_base: object = None
    import_name: object = None
    import_btn: object = None
    refresh_btn: object = None


def build(gr) -> AdaptersTab:
    tab = AdaptersTab()
    try:
        filters, (table, choices) = filter_choices(), listing()
    except Exception:  # noqa: BLE001 - an unreadable workspace must not stop the app from building
        filters, table, choices = {k: [ALL] for k in ("base", "method", "stage", "origin")}, "", []
    with gr.Row():
        tab.base = gr.Dropdown(filters["base"], value=ALL, label="base", scale=2)
        tab.method = gr.Dropdown(filters["method"], value=ALL, label="method", scale=1)
        tab.stage = gr.Dropdown(filters["stage"], value=ALL, label="stage", scale=1)
        tab.origin = gr.Dropdown(filters["origin"], value=ALL, label="origin", scale=1)
        tab.tag = gr.Textbox(label="tag", scale=1, placeholder="e.g. math")
        tab.refresh_btn = gr.Button("Refresh", scale=0, min_width=100)
    tab.table = gr.HTML(table, elem_classes=["ls-adapters-table"])
    with gr.Row():
        with gr.Column(scale=3):
            tab.selected = gr.Dropdown(choices, value=pick(choices, None), label="adapter",
                                       elem_classes=["ls-adapters-selected"])
            tab.card = gr.Markdown(card(pick(choices, None)) if choices else "", elem_classes=["ls-adapters-card"])
        with gr.Column(scale=2):
            tab.note = gr.Textbox(label="note", lines=2)
            tab.tags = gr.Textbox(label="tags", placeholder="comma-separated, e.g. math, v2")
            with gr.Row():
                tab.save_btn = gr.Button("Save note and tags", scale=1)
                tab.delete_btn = gr.Button("Delete…", variant="stop", scale=1)
                tab.confirm_btn = gr.Button("Confirm delete", variant="stop", visible=False, scale=1)
            tab.status = gr.Markdown(elem_classes=["ls-adapters-status"])
    tab.delete_asked = gr.State(None)
    with gr.Accordion("Compose adapters into a new one (no training)", open=True):
        with gr.Row():
            tab.parents = gr.Dropdown(choices, value=[], multiselect=True, label="adapters of one base", scale=3,
                                      elem_classes=["ls-compose-parents"])
            tab.weights = gr.Textbox(label="weights", placeholder="one per adapter, e.g. 0.6, 0.4 (empty: equal)",
                                     scale=2)
        with gr.Row():
            tab.combination = gr.Dropdown([(f"{k}: {COMBINATION_HELP[k]}", k) for k in COMBINATIONS],
                                          value="linear", label="combination", scale=3)
            tab.density = gr.Slider(0.05, 1.0, value=DEFAULT_DENSITY, step=0.05, label="density (share kept)",
                                    visible=False, scale=1)
            tab.compose_name = gr.Textbox(label="name", scale=1)
            tab.compose_btn = gr.Button("Compose", variant="primary", scale=0, min_width=120,
                                        elem_classes=["ls-compose-btn"])
        with gr.Row():
            tab.skills_btn = gr.Button("Check the parents' skills", scale=0, min_width=200)
        tab.skills = gr.Markdown(elem_classes=["ls-compose-skills"])
        tab.skills_chart = gr.Plot(label="loss on each parent's held-out rows")
    with gr.Accordion("Import a peft adapter folder trained elsewhere", open=False):
        with gr.Row():
            tab.import_folder = gr.Textbox(label="folder on this machine", scale=3,
                                           placeholder="/path/to/adapter (adapter_config.json + "
                                                       "adapter_model.safetensors)")
            tab.import_base = gr.Textbox(label="base model (optional)", scale=2,
                                         placeholder="default: the one its adapter_config.json names")
            tab.import_name = gr.Textbox(label="name", scale=1)
            tab.import_btn = gr.Button("Import", scale=0, min_width=100)
    return tab


def wire(gr, tab: AdaptersTab, tab_item=None) -> None:
    from ui.common import readable

    filters = [tab.base, tab.method, tab.stage, tab.origin, tab.tag]

    def shown(base, method, stage, origin, tag, current):
        table, choices = listing(base, method, stage, origin, tag)
        chosen = pick(choices, current)
        every = filter_choices()
        return (gr.update(choices=every["base"]), gr.update(choices=every["method"]),
                gr.update(choices=every["stage"]), gr.update(choices=every["origin"]), table,
                gr.update(choices=choices, value=chosen), gr.update(choices=listing()[1]), *_details(chosen))

    def _details(adapter_id):
        if not adapter_id:
            return "Pick an adapter to see its provenance.", "", "", *skills_view(None)
        entry = adapters.get(adapter_id)
        return (card(adapter_id), entry.note, ", ".join(entry.tags),
                *(skills_view(adapter_id) if entry.parents else ("", None)))

    listing_outputs = [tab.base, tab.method, tab.stage, tab.origin, tab.table, tab.selected, tab.parents,
                       tab.card, tab.note, tab.tags, tab.skills, tab.skills_chart]
    refresh_inputs = [*filters, tab.selected]
    if tab_item is not None:
        tab_item.select(shown, refresh_inputs, listing_outputs, show_progress="hidden")
    tab.refresh_btn.click(shown, refresh_inputs, listing_outputs, show_progress="hidden")
    for control in filters:
        control.change(shown, refresh_inputs, listing_outputs, show_progress="hidden")
    tab.selected.input(_details, tab.selected, [tab.card, tab.note, tab.tags, tab.skills, tab.skills_chart],
                       show_progress="hidden")
    tab.combination.change(lambda kind: gr.update(visible=COMBINATIONS.get(kind, (False, False))[1]),
                           tab.combination, tab.density, show_progress="hidden")

    def save(adapter_id, note, tags):
        try:
            entry = adapters.annotate(adapter_id, note=note, tags=(tags or "").split(","))
        except Exception as error:  # noqa: BLE001
            return f"⚠️ {readable(error)}"
        return f"Saved: note and tags of {entry.id}."

    tab.save_btn.click(save, [tab.selected, tab.note, tab.tags], tab.status)

    def ask_delete(adapter_id):
        try:
            message, asked = delete_request(adapter_id)
        except Exception as error:  # noqa: BLE001
            return f"⚠️ {readable(error)}", gr.update(visible=False), None
        return message, gr.update(visible=asked is not None), asked

    tab.delete_btn.click(ask_delete, tab.selected, [tab.status, tab.confirm_btn, tab.delete_asked])

    def do_delete(adapter_id, asked, *filter_values):
        try:
            message = delete_confirmed(adapter_id, asked)
        except Exception as error:  # noqa: BLE001
            return (f"⚠️ {readable(error)}", gr.update(visible=False), None, *[gr.skip()] * len(listing_outputs))
        gr.Info(message)
        return (message, gr.update(visible=False), None, *shown(*filter_values, None))

    tab.confirm_btn.click(do_delete, [tab.selected, tab.delete_asked, *filters],
                          [tab.status, tab.confirm_btn, tab.delete_asked, *listing_outputs])

    def do_compose(parent_ids, weights, combination, density, name, *filter_values, progress=gr.Progress()):
        try:
            entry = run_compose(parent_ids, weights, combination, density, name,
                                progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as error:  # noqa: BLE001 - one sentence in the page
            gr.Warning(readable(error))
            return (f"⚠️ {readable(error)}", *[gr.skip()] * len(listing_outputs))
        gr.Info(f"Composed {entry.id}.")
        return (f"Composed **{entry.id}** (rank {entry.rank}): try it in the Playground against each parent, "
                "or check the parents' skills below.", *shown(*filter_values, entry.id))

    tab.compose_btn.click(do_compose, [tab.parents, tab.weights, tab.combination, tab.density, tab.compose_name,
                                       *filters], [tab.status, *listing_outputs])

    def do_skills(adapter_id, progress=gr.Progress()):
        try:
            return skills_view(adapter_id, run=True, progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as error:  # noqa: BLE001
            return f"⚠️ {readable(error)}", None

    tab.skills_btn.click(do_skills, tab.selected, [tab.skills, tab.skills_chart])

    def do_import(folder, base, name, *filter_values):
        from backend.adapters.importer import import_adapter
        try:
            entry = import_adapter(folder, base=(base or "").strip() or None, name=name or "")
        except Exception as error:  # noqa: BLE001
            gr.Warning(readable(error))
            return (f"⚠️ {readable(error)}", *[gr.skip()] * len(listing_outputs))
        gr.Info(f"Imported {entry.id}.")
        return (f"Imported **{entry.id}** ({entry.method}, rank {entry.rank}, on {entry.base}).",
                *shown(*filter_values, entry.id))

    tab.import_btn.click(do_import, [tab.import_folder, tab.import_base, tab.import_name, *filters],
                         [tab.status, *listing_outputs])
