"""Evaluate tab: the quality report of a job, base vs adapter (and a second job), with charts and a per-row table.

Pick a job (and optionally a second one), tick what to run, press Run: a progress bar with ETA, then one bar
chart per metric, the metrics as a table (better / worse marked), every row with the answers side by side,
sorted with the rows that got worse first, and a CSV download. The saved report (runs/<job>/eval.json) is
shown again whenever the job is picked; the leaderboard lists every job that has one.

Handlers are plain functions (tested without a browser); `build()` makes the components, `wire()` connects them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, fields

from backend import workspace
from backend.evaluate import report as reports
from ui.common import UserError, md_escape, pick, readable, usable_job_choices

VARIANT_COLOURS = {"base": "#90a4ae", "adapter": "#1565c0", "compare": "#ef6c00"}
ROW_COLUMNS = ["section", "row", "change (+ better)", "prompt", "reference", "base", "adapter", "compare", "note"]


# ---------------------------------------------------------------- reading a report

def options_from_form(values: dict) -> reports.EvalOptions:
    """The form's values (field name -> value) as EvalOptions; numbers come back from gr.Number as floats."""
    kwargs = {}
    for f in fields(reports.EvalOptions):
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(f.default, bool):
            value = bool(value)
        elif isinstance(f.default, int):
            value = int(value or f.default)
        else:
            value = ", ".join(value) if isinstance(value, list) else str(value or "").strip()
        kwargs[f.name] = value
    return reports.EvalOptions(**kwargs)


def summary_markdown(report: dict | None) -> str:
    if not report:
        return "_No report for this job yet: tick what to run and press **Run report**._"
    titles = " · ".join(f"**{v['key']}** = {md_escape(v['title'])}" for v in report.get("variants", []))
    lines = [f"### Quality report of {report['job_id']} ({md_escape(report.get('adapter', ''))})",
             f"{titles} · {report.get('seconds', 0):.0f} s · {report.get('created', '')}"]
    if report.get("caveat"):
        lines.append(f"⚠️ {md_escape(report['caveat'])}")
    better = [m["label"] for m in reports.all_metrics(report) if reports.verdict(m) == "better"]
    worse = [m["label"] for m in reports.all_metrics(report) if reports.verdict(m) == "worse"]
    if better or worse:
        lines.append(f"adapter vs base: **better** on {', '.join(better) or 'nothing'}; "
                     f"**worse** on {', '.join(worse) or 'nothing'}.")
    lines += [f"- ⚠️ {md_escape(error)}" for error in reports.errors_of(report)]
    for name, section in (report.get("sections") or {}).items():
        lines += [f"- {reports.SECTION_TITLES.get(name, name)}: {md_escape(note)}" for note in section.get("notes") or []]
    return "\n\n".join(lines[:3]) + ("\n\n" + "\n".join(lines[3:]) if lines[3:] else "")


def metrics_table(report: dict | None) -> list[list]:
    """[section, metric, base, adapter, (compare), verdict] rows for a gr.Dataframe."""
    if not report:
        return []
    keys = [v["key"] for v in report.get("variants", [])]
    rows = []
    for metric in reports.all_metrics(report):
        values = metric.get("values") or {}
        rows.append([reports.SECTION_TITLES.get(metric["section"], metric["section"]), metric["label"],
                     *[_round(values.get(key)) for key in keys], reports.verdict(metric) or "",
                     "higher is better" if metric.get("higher_is_better") else "lower is better"])
    return rows


def metrics_headers(report: dict | None) -> list[str]:
    keys = [v["key"] for v in (report or {}).get("variants", [])] or ["base", "adapter"]
    return ["section", "metric", *keys, "adapter vs base", "direction"]


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def row_table(report: dict | None) -> list[list]:
    """Every scored row, the ones that got worse first: change = the row's first score, adapter minus base,
    signed so that positive means better."""
    if not report:
        return []
    out = []
    for name, section in (report.get("sections") or {}).items():
        directions = {m["name"]: m.get("higher_is_better", True) for m in section.get("metrics") or []}
        for row in section.get("rows") or []:
            scores = row.get("scores") or {}
            change = None
            for metric, higher in directions.items():
                base, tuned = (scores.get("base") or {}).get(metric), (scores.get("adapter") or {}).get(metric)
                if isinstance(base, (int, float)) and isinstance(tuned, (int, float)):
                    change = round((tuned - base) * (1 if higher else -1), 4)
                    break
            answers = row.get("answers") or {}
            out.append([reports.SECTION_TITLES.get(name, name), row.get("row"), change, row.get("prompt", ""),
                        row.get("reference", ""), answers.get("base", ""), answers.get("adapter", ""),
                        answers.get("compare", ""), row.get("note", "")])
    return sorted(out, key=lambda r: (r[2] is None, r[2] if r[2] is not None else 0))


def metrics_figure(report: dict | None):
    """One small bar chart per metric (their scales differ), a bar per variant in fixed colours."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = reports.all_metrics(report) if report else []
    metrics = [m for m in metrics if any(isinstance(v, (int, float)) for v in (m.get("values") or {}).values())]
    if not metrics:
        fig = go.Figure()
        fig.add_annotation(text="run a report to see base vs adapter per metric", xref="paper", yref="paper",
                           x=0.5, y=0.5, showarrow=False, font={"color": "#888"})
        fig.update_layout(height=240, xaxis={"visible": False}, yaxis={"visible": False})
        return fig
    columns = min(4, len(metrics))
    rows = (len(metrics) + columns - 1) // columns
    titles = [f"{m['label']} {'↑' if m.get('higher_is_better') else '↓'}" for m in metrics]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, vertical_spacing=0.5 / max(rows, 1) + 0.08)
    keys = [v["key"] for v in report.get("variants", [])]
    for index, metric in enumerate(metrics):
        values = metric.get("values") or {}
        shown = [key for key in keys if isinstance(values.get(key), (int, float))]
        fig.add_trace(go.Bar(x=shown, y=[values[key] for key in shown], showlegend=False,
                             marker={"color": [VARIANT_COLOURS.get(key, "#555") for key in shown]},
                             text=[f"{values[key]:.3g}" for key in shown], textposition="auto"),
                      row=index // columns + 1, col=index % columns + 1)
    fig.update_layout(height=230 * rows + 40, margin={"l": 40, "r": 20, "t": 40, "b": 30})
    fig.update_annotations(font_size=12)
    return fig


def write_rows_csv(report: dict) -> str:
    """The per-row table as CSV under exports/<job_id>/ (the only folder the UI serves); returns its path. One
    file per job, rewritten (via a temporary name) each time a report is shown, so picking jobs leaves no trail."""
    folder = workspace.exports_dir() / report["job_id"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report['job_id']}-eval-rows.csv"
    temporary = folder / f".{path.name}.partial"
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ROW_COLUMNS)
        writer.writerows(row_table(report))
    temporary.replace(path)
    return str(path)


def leaderboard_table() -> tuple[list[str], list[list]]:
    """(headers, rows): every job with a report, one column per metric (the adapter's value)."""
    rows = reports.leaderboard()
    if not rows:
        return ["job"], []
    headers = list(dict.fromkeys(key for row in rows for key in row))
    return headers, [[_round(row.get(key)) for key in headers] for row in rows]


def run(job_id: str | None, values: dict, progress=None) -> dict:
    if not job_id:
        raise UserError("Pick a job first (only jobs with a saved adapter or checkpoint are listed).")
    options = options_from_form(values)
    return reports.run_report(job_id, options, progress)


def benchmark_choices() -> list[str]:
    try:
        from backend.evaluate import benchmarks
        return list(benchmarks.list_tasks())
    except Exception:  # noqa: BLE001 - lm-eval missing or broken: the box still takes typed names
        return []


# ---------------------------------------------------------------- gradio

@dataclass
class EvaluateTab:
    job: object = None
    compare: object = None
    fields: dict = None            # EvalOptions field name -> component
    run_btn: object = None
    status: object = None
    summary: object = None
    chart: object = None
    metrics: object = None
    rows: object = None
    csv_btn: object = None
    leaderboard: object = None
    leaderboard_btn: object = None

    def inputs(self) -> list:
        return list(self.fields.values())


def _help(name: str) -> str:
    return reports.EvalOptions.__dataclass_fields__[name].metadata["help"]


def build(gr) -> EvaluateTab:
    tab = EvaluateTab(fields={})
    defaults = reports.EvalOptions()
    try:
        choices = usable_job_choices()
    except Exception:  # noqa: BLE001
        choices = []
    with gr.Row():
        tab.job = gr.Dropdown(choices=choices, value=pick(choices, None), label="job", scale=3,
                              info="A finished job (an unfinished one is evaluated on its newest checkpoint, "
                                   "and the report says so).", elem_classes=["ls-eval-job"])
        tab.compare = gr.Dropdown(choices=[("none", "")] + choices, value="", label="compare with (optional)",
                                  scale=3, info=_help("compare_job"))
    tab.fields["compare_job"] = tab.compare
    with gr.Row():
        for name in ("task", "forgetting", "formats"):
            tab.fields[name] = gr.Checkbox(value=getattr(defaults, name), label=reports.SECTION_TITLES[name],
                                           info=_help(name), elem_classes=[f"ls-eval-{name}"])
    with gr.Row():
        tab.fields["benchmarks"] = gr.Dropdown(benchmark_choices(), value=[], multiselect=True,
                                               allow_custom_value=True, label="benchmarks (lm-evaluation-harness)",
                                               info=_help("benchmarks"), scale=3)
        tab.fields["corpus_path"] = gr.File(label="your own text (.txt, optional)", file_types=[".txt", ".md"],
                                            type="filepath", scale=2)
    with gr.Accordion("LLM judge (optional: any OpenAI-compatible endpoint)", open=False):
        with gr.Row():
            tab.fields["judge_url"] = gr.Textbox(label="endpoint URL", placeholder="http://127.0.0.1:8000/v1",
                                                 info=_help("judge_url"))
            tab.fields["judge_model"] = gr.Textbox(label="model", info=_help("judge_model"))
            tab.fields["judge_key"] = gr.Textbox(label="API key", type="password", info=_help("judge_key"))
    with gr.Row():
        for name, label in (("max_rows", "rows per section"), ("max_new_tokens", "max new tokens"),
                            ("batch_size", "batch size")):
            f = reports.EvalOptions.__dataclass_fields__[name]
            tab.fields[name] = gr.Number(value=getattr(defaults, name), precision=0, minimum=f.metadata["min"],
                                         maximum=f.metadata["max"], label=label, info=_help(name))
    with gr.Row(equal_height=True):
        tab.run_btn = gr.Button("Run report", variant="primary", scale=0, min_width=180, elem_classes=["ls-eval-run"])
        tab.status = gr.Markdown(elem_classes=["ls-eval-status"])
    tab.summary = gr.Markdown(summary_markdown(None), elem_classes=["ls-eval-summary"])
    tab.chart = gr.Plot(label="base vs adapter, per metric", elem_classes=["ls-eval-chart"])
    tab.metrics = gr.Dataframe(headers=metrics_headers(None), value=[], label="metrics", interactive=False,
                               wrap=True, elem_classes=["ls-eval-metrics"])
    tab.rows = gr.Dataframe(headers=ROW_COLUMNS, value=[], label="rows (the ones that got worse first; click a "
                            "column to sort)", interactive=False, wrap=True, max_height=500,
                            elem_classes=["ls-eval-rows"])
    tab.csv_btn = gr.DownloadButton("Download rows as CSV", visible=False, elem_classes=["ls-eval-csv"])
    with gr.Accordion("Leaderboard: every job with a report", open=False):
        tab.leaderboard = gr.Dataframe(value=[], label="adapter's value per metric (click a column to sort)",
                                       interactive=False, elem_classes=["ls-eval-leaderboard"])
        tab.leaderboard_btn = gr.Button("Refresh leaderboard")
    return tab


def _shown(gr, report: dict | None, status: str = ""):
    csv_path = write_rows_csv(report) if report and row_table(report) else None
    return (status, summary_markdown(report), metrics_figure(report),
            gr.update(value=metrics_table(report), headers=metrics_headers(report)), row_table(report),
            gr.update(value=csv_path, visible=csv_path is not None))


def wire(gr, tab: EvaluateTab, tab_item=None) -> None:
    outputs = [tab.status, tab.summary, tab.chart, tab.metrics, tab.rows, tab.csv_btn]
    names = list(tab.fields)

    def show_saved(job_id):
        return _shown(gr, reports.read_report(job_id) if job_id else None)

    tab.job.change(show_saved, tab.job, outputs, show_progress="hidden")

    def refresh(current, compare):
        choices = usable_job_choices()
        board_headers, board_rows = leaderboard_table()
        return (gr.update(choices=choices, value=pick(choices, current)),
                gr.update(choices=[("none", "")] + choices, value=compare or ""),
                gr.update(value=board_rows, headers=board_headers))

    if tab_item is not None:
        tab_item.select(refresh, [tab.job, tab.compare], [tab.job, tab.compare, tab.leaderboard],
                        show_progress="hidden")

    def board():
        board_headers, board_rows = leaderboard_table()
        return gr.update(value=board_rows, headers=board_headers)

    tab.leaderboard_btn.click(board, None, tab.leaderboard)

    def do_run(job_id, *values, progress=gr.Progress()):
        try:
            report = run(job_id, dict(zip(names, values)),
                         progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as error:  # noqa: BLE001 - one sentence in the page, the trace in the log
            import logging
            logging.getLogger("lorastudio.ui").exception("quality report failed")
            message = readable(error)
            gr.Warning(message)
            return (f"⚠️ {message}", *[gr.skip()] * (len(outputs) - 1))
        errors = reports.errors_of(report)
        gr.Info(f"Quality report of {report['job_id']} saved" + (f" ({len(errors)} section(s) skipped)." if errors
                                                                 else "."))
        return _shown(gr, report, f"Done in {report['seconds']:.0f} s: saved as `eval.json` in the run folder.")

    tab.run_btn.click(do_run, [tab.job, *tab.inputs()], outputs, show_progress="full",
                      show_progress_on=[tab.status])
