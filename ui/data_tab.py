"""Data tab: upload (drag and drop) or pick a registered / demo dataset; the validation report (errors with
row numbers, warnings, stage compatibility), a column mapping when the format cannot be detected, a preview
through the chosen model's chat template (trained spans highlighted) and the token-length histogram. Raw text
(stage pretrain) has its own report: documents, tokens, blocks of max_length, the tail dropped, the longest documents.

Handlers are plain functions of plain values; `build()` wires them.
"""
from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from pathlib import Path

from backend import data as data_backend
from backend.data.preview import preview as preview_rows
from backend.data.preview import preview_html
from backend.data.stats import label_balance_figure, token_length_figure
from backend.vocab import Stage
from ui.common import md_escape, one_line

ANY_STAGE = "any"
STAGE_CHOICES = [ANY_STAGE, *Stage.values()]
UPLOAD_TYPES = [".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md"]
# canonical columns a user can map file columns onto (formats.apply_mapping: {canonical: column in file})
MAPPABLE = ("messages", "instruction", "input", "output", "prompt", "completion", "chosen", "rejected", "label",
            "system", "tools", "text")
SHOWN_GROUPS = 20


# ---------------------------------------------------------------- plain handlers

def source_choices() -> list[tuple[str, str]]:
    from ui.common import dataset_choices
    return dataset_choices()


def ready_model_choices() -> list[str]:
    from backend import models
    return [m.name for m in models.list_models() if m.ready]


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str):
    from backend import models
    return models.load_tokenizer(model)


def tokenizer_for(model: str | None):
    """The model's tokenizer when the model is ready (never converts or downloads here), else None."""
    if not model or model not in ready_model_choices():
        return None
    try:
        return _tokenizer(model)
    except Exception:  # noqa: BLE001 - length checks and preview are optional
        return None


def clean_mapping(mapping: dict | None) -> dict | None:
    mapping = {k: v for k, v in (mapping or {}).items() if v}
    return mapping or None


def validate(spec: str, stage: str | None = None, model: str | None = None, max_length: int = 512,
             mapping: dict | None = None, eval_fraction: float = 0.1):
    """The backend validation report (never raises for bad data)."""
    stage = None if stage in (None, "", ANY_STAGE) else stage
    return data_backend.validate(spec, stage=stage, tokenizer=tokenizer_for(model), max_length=int(max_length),
                                 eval_fraction=eval_fraction, column_mapping=clean_mapping(mapping))


def report_markdown(report) -> str:
    """The report as Markdown: verdict, stage table, lengths, errors (with rows), warnings."""
    from backend.data.formats import format_label

    name = (report.path or "").rsplit("/", 1)[-1]
    ok = report.ok
    verdict = "✅ usable" if ok else "❌ not usable"
    if report.stage:
        verdict += f" for {report.stage.upper()}"
    lines = [f"### {md_escape(name)}: {verdict}",
             f"{format_label(report.format, 'format not detected')} · {report.rows} rows read · "
             f"{report.usable_rows} without errors"]
    if report.split:
        unit = f" {report.split['unit']}" if report.split.get("unit") else ""
        lines[-1] += (f" · split {report.split.get('train', '?')} train / {report.split.get('eval', '?')} eval"
                      f"{unit}")
    if report.stages:
        lines.append("| stage | usable | rows | note |\n|---|---|---|---|")
        lines[-1] += "".join(f"\n| {s.upper()} | {'yes' if c.usable else 'no'} | {c.rows} | "
                             f"{md_escape(c.reason or '')} |" for s, c in report.stages.items())
    if report.text_stats:
        lines.append(text_stats_markdown(report.text_stats))
    elif report.kind == "text" and report.rows:
        lines.append("_Documents, tokens and blocks need a ready model's tokenizer: pick one above (the bundled "
                     "model once converted)._")
    elif report.token_lengths:
        t, over = report.token_lengths, report.over_max_length or {}
        lines.append(f"Tokens per row: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; "
                     f"**{over.get('rows', 0)}** over max_length {report.max_length} "
                     f"({over.get('answer_lost', 0)} would lose the whole answer).")
    elif report.token_note:
        lines.append(f"_{md_escape(report.token_note[:1].upper() + report.token_note[1:])}._")
    elif report.rows:
        lines.append("_Token lengths need a ready model: pick one above (the bundled model once converted)._")
    lines += shape_lines(report)
    for title, groups in (("Errors", report.errors), ("Warnings", report.warnings)):
        if groups:
            items = "\n".join(f"- {md_escape(g.sentence(name))}" for g in groups[:SHOWN_GROUPS])
            more = f"\n- … and {len(groups) - SHOWN_GROUPS} more kinds" if len(groups) > SHOWN_GROUPS else ""
            lines.append(f"**{title} ({len(groups)})**\n{items}{more}")
    return "\n\n".join(lines)


def shape_lines(report) -> list[str]:
    """Tool calls and reasoning sections: how many rows train them, and how calls are written."""
    lines = []
    if report.tool_call_rows:
        written = {"hermes": " · written in the Hermes format (schemas in a system block, each call as "
                             "<tool_call> JSON): this model's own chat template writes no tools, so the studio adds "
                             "the format to it and saves it with the adapter",
                   "template": " · written by the model's own chat template"}.get(report.tool_format, "")
        lines.append(f"Tool calls: **{report.tool_call_rows}** rows train an assistant tool call{md_escape(written)}.")
    if report.reasoning:
        r = report.reasoning
        lines.append(f"Reasoning: **{r['with']}** rows answer with a `<think>` section, {r['empty']} with an empty "
                     f"one, {r['without']} without.")
    return lines


def text_stats_markdown(stats: dict) -> str:
    """Raw text's own numbers (backend.data.packing.text_stats): what packing into blocks keeps and drops."""
    blocks, length, tail = stats["blocks"], stats["block_length"], stats["tail_tokens"]
    lines = [f"**Raw text** · {stats['documents']:,} documents · {stats['tokens']:,} tokens (an EOS after each "
             f"document included) · **{blocks:,} full blocks** of max_length {length} · {tail:,} tail tokens "
             "dropped (the last partial block; every block trains on all of its tokens, no chat template)."]
    if stats.get("longest"):
        lines.append("| longest documents | source | tokens |\n|---|---|---|" + "".join(
            f"\n| row {item['row']} | {md_escape(item.get('source') or '-')} | {item['tokens']:,} |"
            for item in stats["longest"]))
    return "\n\n".join(lines)


def needs_mapping(report) -> bool:
    """Offer the column mapping when the format could not be detected but columns were read, or when the file
    has columns the detected format does not read."""
    return bool(report.columns) and (report.format is None or bool(report.ignored_columns))


def histogram(report):
    if report.text_stats:
        return _blocks_figure(report.text_stats)
    if report.label_balance and not report.length_values:
        return label_balance_figure(report.label_balance)
    if not report.length_values:
        import plotly.graph_objects as go
        fig = go.Figure()
        fig.add_annotation(text="token lengths appear here once a ready model is picked and the data is valid",
                           xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
        fig.update_layout(height=300, xaxis={"visible": False}, yaxis={"visible": False})
        return fig
    return token_length_figure(report)


def _blocks_figure(stats: dict):
    """Raw text has no rows to cut at max_length: its tokens as full blocks and the tail that packing drops."""
    import plotly.graph_objects as go

    used = stats["blocks"] * stats["block_length"]
    fig = go.Figure(go.Bar(x=["in full blocks", "tail dropped"], y=[used, stats["tail_tokens"]],
                           marker_color=["#4c78a8", "#e45756"]))
    fig.update_layout(title=f"Tokens packed into {stats['blocks']} blocks of {stats['block_length']}",
                      yaxis_title="tokens", height=300, showlegend=False, margin={"l": 40, "r": 20, "t": 50, "b": 40})
    return fig


def preview_stage(report, stage: str | None) -> str | None:
    if stage and stage != ANY_STAGE:
        return stage
    return next((s for s, c in report.stages.items() if c.usable), None)


def preview_block(spec: str, report, stage: str | None, model: str | None, max_length: int,
                  mapping: dict | None = None, rows: int = 3) -> str:
    stage = preview_stage(report, stage)
    tokenizer = tokenizer_for(model)
    if tokenizer is None:
        return "<i>The preview renders rows through a ready model's chat template: pick a model above.</i>"
    if stage is None or not report.usable_for(stage):
        return "<i>No preview: the dataset is not usable for this stage (see the report).</i>"
    try:
        entries = preview_rows(spec, tokenizer, stage=stage, n=rows, max_length=int(max_length),
                               column_mapping=clean_mapping(mapping))
    except Exception as error:  # noqa: BLE001
        return f"<i>No preview: {html.escape(one_line(error))}</i>"
    if stage == Stage.PRETRAIN:
        legend = ("<div><mark style='background:#c8f7c5'>trained (carries loss)</mark>: raw text, no chat "
                  "template; every token of a document and the EOS after it are trained · stage PRETRAIN</div>")
        return legend + preview_html(entries)
    legend = ("<div><mark style='background:#c8f7c5'>trained (carries loss)</mark> · "
              "<span style='opacity:.65'>prompt (masked)</span> · <s style='opacity:.45'>cut at max_length</s>"
              f" · stage {stage.upper()}</div>")
    return legend + preview_html(entries)


def register(path: str, name: str | None = None, mapping: dict | None = None) -> str:
    """Store an uploaded file as a dataset; returns what names it from now on: the name given, else its id."""
    dataset_id = data_backend.register_upload(Path(path), name=(name or None), column_mapping=clean_mapping(mapping))
    return data_backend.display_name(dataset_id)


@dataclass
class Checked:
    report_md: str
    figure: object
    preview: str
    mapping_visible: bool
    columns: list
    ok: bool


def check(spec: str, stage: str | None, model: str | None, max_length: int, mapping: dict | None = None) -> Checked:
    """Everything the tab shows for one dataset (validate + histogram + preview)."""
    report = validate(spec, stage, model, max_length, mapping)
    return Checked(report_md=report_markdown(report), figure=histogram(report),
                   preview=preview_block(spec, report, stage, model, max_length, mapping),
                   mapping_visible=needs_mapping(report) or bool(clean_mapping(mapping)),
                   columns=list(report.columns), ok=report.ok)


# ---------------------------------------------------------------- gradio wiring

@dataclass
class DataTab:
    upload: object = None
    source: object = None
    stage: object = None
    model: object = None
    max_length: object = None
    mapping_box: object = None
    mapping: dict = None            # canonical column -> dropdown
    recheck_btn: object = None
    report: object = None
    histogram: object = None
    preview: object = None
    dataset_name: object = None
    register_btn: object = None
    use_btn: object = None
    status: object = None
    current: object = None          # gr.State: the spec being shown (registered id / demo / uploaded path)


def build(gr) -> DataTab:
    from backend.config import field_help, field_limits
    tab = DataTab(mapping={})
    with gr.Row():
        with gr.Column(scale=2):
            tab.upload = gr.File(label="Drop a dataset file here (.jsonl, .json, .csv, .parquet; .txt / .md text for pretrain)",
                                 file_types=UPLOAD_TYPES, file_count="single", type="filepath",
                                 elem_classes=["ls-upload"])
        with gr.Column(scale=2):
            tab.source = gr.Dropdown(choices=_safe(source_choices), value=None,
                                     label="…or pick a registered / demo dataset", elem_classes=["ls-source"])
            with gr.Row():
                tab.stage = gr.Dropdown(choices=STAGE_CHOICES, value=ANY_STAGE, label="stage",
                                        info="Check the data for one training stage (any = all).")
                models = _safe(ready_model_choices)
                tab.model = gr.Dropdown(choices=models, value=models[0] if models else None,
                                        label="model (chat template)", scale=2, min_width=260,
                                        info="Token lengths and the preview use this model's chat template.")
                limits = field_limits("training.max_length")
                tab.max_length = gr.Number(value=512, precision=0, minimum=limits.get("min"),
                                           maximum=limits.get("max"), label="max length",
                                           info=field_help("training.max_length"))
    with gr.Group(visible=False) as tab.mapping_box:
        gr.Markdown("**Column mapping**: the format could not be detected, or some columns are not read (see "
                    "the warnings). Tell which column holds what (leave the others empty), then press Check again.")
        with gr.Row():
            for canonical in MAPPABLE:
                tab.mapping[canonical] = gr.Dropdown(choices=[], value=None, label=canonical,
                                                     allow_custom_value=True, min_width=120)
        tab.recheck_btn = gr.Button("Check again with this mapping")
    tab.report = gr.Markdown("Upload a file or pick a dataset to see its validation report.",
                             elem_classes=["ls-report"])
    with gr.Row():
        tab.dataset_name = gr.Textbox(label="dataset name (optional)", scale=2)
        tab.register_btn = gr.Button("Save upload as dataset", scale=1)
        tab.use_btn = gr.Button("Use in Train form", variant="primary", scale=1)
    tab.status = gr.Markdown()
    with gr.Row():
        with gr.Column():
            tab.histogram = gr.Plot(label="token lengths")
        with gr.Column():
            tab.preview = gr.HTML(label="preview", elem_classes=["ls-preview-block"])
    tab.current = gr.State(None)
    _wire(gr, tab)
    return tab


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return []


def _wire(gr, tab: DataTab) -> None:
    canon = list(tab.mapping)
    mapping_inputs = [tab.mapping[c] for c in canon]
    outputs = [tab.report, tab.histogram, tab.preview, tab.mapping_box, *mapping_inputs, tab.current]

    def show(spec, stage, model, max_length, *mapping_values):
        if not spec:
            return ["Upload a file or pick a dataset to see its validation report.", None, "",
                    gr.update(visible=False)] + [gr.skip()] * len(canon) + [None]
        mapping = dict(zip(canon, mapping_values))
        try:
            result = check(spec, stage, model, max_length or 512, mapping)
        except Exception as error:  # noqa: BLE001
            return [f"⚠️ {one_line(error)}", None, "", gr.skip()] + [gr.skip()] * len(canon) + [spec]
        column_updates = [gr.update(choices=[""] + result.columns) for _ in canon]
        return [result.report_md, result.figure, result.preview, gr.update(visible=result.mapping_visible),
                *column_updates, spec]

    settings = [tab.stage, tab.model, tab.max_length, *mapping_inputs]
    empty_mapping = [None] * len(canon)

    def on_upload(path, stage, model, max_length):
        return show(path, stage, model, max_length, *empty_mapping)

    tab.upload.upload(on_upload, [tab.upload, tab.stage, tab.model, tab.max_length], outputs,
                      show_progress="full")

    def on_source(spec, stage, model, max_length):
        return show(spec, stage, model, max_length, *empty_mapping)

    tab.source.input(on_source, [tab.source, tab.stage, tab.model, tab.max_length], outputs, show_progress="full")
    for control in (tab.stage, tab.model, tab.max_length):
        control.input(show, [tab.current, *settings], outputs, show_progress="full")
    tab.recheck_btn.click(show, [tab.current, *settings], outputs, show_progress="full")

    def on_register(path, name, *mapping_values):
        if not path:
            return "Drop a file first.", gr.skip()
        try:
            dataset_id = register(path, name, dict(zip(canon, mapping_values)))
        except Exception as error:  # noqa: BLE001
            return f"⚠️ {one_line(error)}", gr.skip()
        gr.Info(f"Saved as dataset {dataset_id}.")
        return (f"Saved as dataset **{md_escape(dataset_id)}** (use this name in the Train tab, a job config or "
                f"`--set dataset=...`).", gr.update(choices=_safe(source_choices), value=dataset_id))

    tab.register_btn.click(on_register, [tab.upload, tab.dataset_name, *mapping_inputs], [tab.status, tab.source],
                           show_progress="full")


def wire_use(gr, tab: DataTab, dataset_control, stage_control, extra_outputs: list, extra_values) -> None:
    """'Use in Train form': registers an upload if needed, then fills the Train tab's dataset (and stage)."""
    canon = list(tab.mapping)

    def on_use(current, upload, stage, name, *mapping_values):
        spec = current
        if current and upload and current == upload:     # the upload is shown: store it first
            try:
                spec = register(upload, name, dict(zip(canon, mapping_values)))
            except Exception as error:  # noqa: BLE001
                return [f"⚠️ {one_line(error)}", gr.skip(), gr.skip()] + [gr.skip()] * len(extra_outputs)
        if not spec:
            return ["Upload a file or pick a dataset first.", gr.skip(), gr.skip()] + [gr.skip()] * len(extra_outputs)
        choices = _safe(source_choices)
        return ([f"Dataset **{md_escape(spec)}** is set in the Train form.",
                 gr.update(choices=choices, value=spec),
                 gr.update(value=stage) if stage and stage != ANY_STAGE else gr.skip()]
                + list(extra_values()))

    tab.use_btn.click(on_use, [tab.current, tab.upload, tab.stage, tab.dataset_name,
                               *[tab.mapping[c] for c in canon]],
                      [tab.status, dataset_control, stage_control, *extra_outputs], show_progress="full")
