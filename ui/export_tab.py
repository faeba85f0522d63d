"""Export tab: one click exports a job's merged model (dtype auto / float16 / bfloat16 / float32) or its adapter
alone, zipped with a progress bar, offered as a browser download and listed for re-download later.

The merged export shows its merge verification (largest adapter-vs-merged logit difference, greedy answers)
with a warning when above tolerance. Errors (a deleted job, a second export while one runs, a path outside the
exports folder) become one sentence; a failed export offers nothing to download (the backend writes under a
hidden .partial name and renames only when complete).

Handlers are plain functions (tested without a browser); `build()` makes the components, `wire()` connects them.
"""
from __future__ import annotations

from dataclasses import dataclass

from backend import export
from ui.common import UserError, fmt_duration, fmt_time, md_escape, pick, usable_job_choices

KIND_LABELS = {"merged": "merged model (base + adapter, loads without peft)", "adapter": "adapter only (PEFT folder)",
               "gguf": "GGUF (llama.cpp / Ollama / LM Studio)",
               "lora-gguf": "LoRA GGUF (the adapter for llama.cpp / Ollama, with its base model as GGUF)"}
DTYPE_CHOICES = [("auto (the base model's own)", "auto"), ("float16", "float16"), ("bfloat16", "bfloat16"),
                 ("float32", "float32")]


QTYPE_LABELS = {"q4_k_m": "Q4_K_M: 4-bit, Ollama's usual choice (smallest)", "q5_k_m": "Q5_K_M: 5-bit",
                "q6_k": "Q6_K: 6-bit, close to the float model", "q8_0": "Q8_0: 8-bit", "f16": "F16: 16-bit float"}


def gguf_qtypes() -> tuple:
    """The GGUF types this installation writes (the k-quants only where llama.cpp is built)."""
    return tuple(export.gguf_qtypes_here())


def qtype_choices() -> list[tuple[str, str]]:
    return [(QTYPE_LABELS.get(q, q.upper()), q) for q in gguf_qtypes()]


def kind_choices() -> list[tuple[str, str]]:
    kinds = list(export.KINDS)
    if gguf_qtypes() and "gguf" not in kinds:
        kinds.append("gguf")
    return [(KIND_LABELS.get(k, k), k) for k in kinds]


def fmt_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def run_export(job_id: str | None, kind: str, dtype: str = "auto", qtype: str | None = None, progress=None):
    """Export and return the ExportResult (errors raise with one sentence)."""
    if not job_id:
        raise UserError("Pick a job first (only jobs with a saved adapter or checkpoint are listed).")
    kwargs = {"kind": kind, "progress": progress}
    if kind == "merged":
        kwargs["dtype"] = dtype or "auto"
    if kind == "gguf":
        kwargs["qtype"] = qtype or (gguf_qtypes()[0] if gguf_qtypes() else None)
        kwargs.pop("dtype", None)
    return export.export_job(job_id, **kwargs)


def check_lines(check) -> list[str]:
    if check is None:
        return []
    lines = [("" if check.ok else "⚠️ ") + f"**merge check**: {md_escape(check.summary())}"]
    for prompt, same, a, m in zip(check.prompts, check.answers_match, check.adapter_answers, check.merged_answers):
        mark = "=" if same else "≠"
        lines.append(f"- *{md_escape(prompt)}* → adapter: “{md_escape(a[:120])}” {mark} "
                     f"merged: “{md_escape(m[:120])}”")
    return lines


def gguf_lines(verification: dict | None) -> list[str]:
    """The GGUF file loaded back and compared with the merged model (kind gguf): which check decided and why
    (backend.export.gguf.check_detail), as its own paragraph."""
    if not verification:
        return []
    from backend.export.gguf import check_detail

    what = "LoRA GGUF" if verification.get("lora") else "GGUF"
    title = f"{what} {md_escape(str(verification.get('qtype', '')).upper())} check"
    mark = "**" + title + ": passed**" if verification.get("ok") else "⚠️ **" + title + ": not verified**"
    return [f"{mark} — {md_escape(check_detail(verification))}"]


def result_markdown(result) -> str:
    """The export card: what was written, how long it took, the merge verification, the GGUF verification and
    any notes, each its own block (a paragraph after a list would otherwise run into its last bullet)."""
    size = result.zip_path.stat().st_size if result.zip_path.exists() else 0
    blocks = [f"### Exported {result.job_id} ({result.kind})",
              f"`{result.zip_path.name}` · {fmt_size(size)} · {fmt_duration(result.seconds) or '0 s'}"]
    merge = check_lines(result.check)
    if merge:
        blocks.append(merge[0])
        if merge[1:]:
            blocks.append("\n".join(merge[1:]))
    blocks += gguf_lines(getattr(result, "gguf", None))
    if result.notes:
        blocks.append("\n".join(f"- ⚠️ {md_escape(note)}" for note in result.notes))
    return "\n\n".join(blocks)


def export_rows(job_id: str | None = None) -> list:
    return export.list_exports(job_id)


def exports_markdown(files) -> str:
    if not files:
        return "_No exports yet._"
    head = "| file | job | size | created |\n| --- | --- | --- | --- |"
    body = [f"| `{md_escape(f.name)}` | {f.job_id} | {fmt_size(f.size)} | {fmt_time(f.created)} |" for f in files]
    return "\n".join([head, *body])


def export_choices(files) -> list[tuple[str, str]]:
    return [(f"{f.name} · {fmt_size(f.size)} · {fmt_time(f.created)}", str(f.path)) for f in files]


def download_file(path: str | None) -> str:
    """A finished export the browser may download (refuses anything outside exports/ with one sentence)."""
    if not path:
        raise UserError("Pick an export to download.")
    return str(export.download_path(path))


# ---------------------------------------------------------------- gradio


@dataclass
class ExportTab:
    job: object = None
    kind: object = None
    dtype: object = None
    qtype: object = None
    export_btn: object = None
    status: object = None
    card: object = None
    download: object = None       # gr.DownloadButton of the export just made
    listing: object = None
    earlier: object = None        # dropdown of finished exports
    earlier_btn: object = None    # gr.DownloadButton of the picked one
    refresh_btn: object = None


def build(gr) -> ExportTab:
    tab = ExportTab()
    try:
        choices, files = usable_job_choices(), export_rows()
    except Exception:  # noqa: BLE001 - an unreadable workspace must not stop the app from building
        choices, files = [], []
    with gr.Row():
        tab.job = gr.Dropdown(choices=choices, value=pick(choices, None), label="job", scale=3,
                              info="A finished job (a checkpoint of an unfinished one is exported with a note).",
                              elem_classes=["ls-export-job"])
        tab.kind = gr.Radio(kind_choices(), value="merged", label="what to export", scale=3,
                            elem_classes=["ls-export-kind"])
        tab.dtype = gr.Dropdown(DTYPE_CHOICES, value="auto", label="dtype (merged model)", scale=2,
                                info="auto = the base model's own dtype; float32 is exact, half types are "
                                     "half the size.")
        qtypes = qtype_choices()
        tab.qtype = gr.Dropdown(qtypes, value=qtypes[0][1] if qtypes else None, label="quantisation (GGUF)",
                                visible=False, scale=2, info="Checked in llama.cpp before it is offered."
                                if "q4_k_m" in gguf_qtypes() else "Q4_K_M / Q5_K_M / Q6_K need llama.cpp: "
                                "run ./studio.sh start once to build it.")
    # the progress bar is drawn on `status` only (wire: show_progress_on), which sits right of the button, not
    # over every output (the "Earlier exports" table is an output too)
    with gr.Row(equal_height=True, elem_classes=["ls-export-actions"]):
        tab.export_btn = gr.Button("Export and zip", variant="primary", scale=0, min_width=180,
                                   elem_classes=["ls-export-btn"])
        tab.status = gr.Markdown(elem_classes=["ls-export-status"])
    tab.card = gr.Markdown(elem_classes=["ls-export-card"])
    tab.download = gr.DownloadButton("Download zip", visible=False, variant="primary",
                                     elem_classes=["ls-export-download"])
    with gr.Accordion("Earlier exports", open=True):
        tab.listing = gr.Markdown(exports_markdown(files), elem_classes=["ls-export-list"])
        with gr.Row():
            earlier = export_choices(files)
            tab.earlier = gr.Dropdown(earlier, value=earlier[0][1] if earlier else None, label="export", scale=4)
            tab.earlier_btn = gr.DownloadButton("Download", value=earlier[0][1] if earlier else None, scale=1)
            tab.refresh_btn = gr.Button("Refresh", scale=1)
    return tab


def wire(gr, tab: ExportTab, tab_item=None) -> None:
    def refresh(current, current_export):
        choices, files = usable_job_choices(), export_rows()
        earlier = export_choices(files)
        chosen = pick(earlier, current_export)
        return (gr.update(choices=choices, value=pick(choices, current)), exports_markdown(files),
                gr.update(choices=earlier, value=chosen), gr.update(value=chosen))

    refresh_outputs = [tab.job, tab.listing, tab.earlier, tab.earlier_btn]
    if tab_item is not None:
        tab_item.select(refresh, [tab.job, tab.earlier], refresh_outputs, show_progress="hidden")
    tab.refresh_btn.click(refresh, [tab.job, tab.earlier], refresh_outputs, show_progress="hidden")
    tab.kind.change(lambda kind: (gr.update(visible=kind == "merged"), gr.update(visible=kind == "gguf")),
                    tab.kind, [tab.dtype, tab.qtype], show_progress="hidden")

    def offer(job_id, kind):
        # a method that cannot merge (prompt tuning) is offered its adapter only, with the reason as the info
        kinds, why = export.offered_kinds(job_id) if job_id else (export.KINDS, "")
        choices = [c for c in kind_choices() if c[1] in kinds]
        value = kind if kind in kinds else choices[0][1]
        return (gr.update(choices=choices, value=value, info=why or None),
                gr.update(visible=value == "merged"), gr.update(visible=value == "gguf"))

    tab.job.change(offer, [tab.job, tab.kind], [tab.kind, tab.dtype, tab.qtype], show_progress="hidden")

    def do_export(job_id, kind, dtype, qtype, progress=gr.Progress()):
        from ui.common import readable
        try:
            result = run_export(job_id, kind, dtype, qtype,
                                progress=lambda fraction, text: progress(fraction, desc=text))
            path = download_file(result.zip_path)
        except Exception as error:  # noqa: BLE001 - one sentence in the page, the trace in the log
            import logging
            logging.getLogger("lorastudio.ui").exception("export failed")
            message = readable(error)
            gr.Warning(message)
            files = export_rows()
            return (f"⚠️ {message}", "", gr.update(visible=False, value=None), exports_markdown(files),
                    gr.update(choices=export_choices(files)))
        if result.check is not None and not result.check.ok:
            gr.Warning(f"Merge check above tolerance: {result.check.summary()}")
        gr.Info(f"Exported {result.zip_path.name}.")
        files = export_rows()
        return (f"Done: `{result.zip_path.name}`", result_markdown(result),
                gr.update(value=path, visible=True, label=f"Download {result.zip_path.name}"),
                exports_markdown(files), gr.update(choices=export_choices(files), value=path))

    tab.export_btn.click(do_export, [tab.job, tab.kind, tab.dtype, tab.qtype],
                         [tab.status, tab.card, tab.download, tab.listing, tab.earlier],
                         show_progress="full", show_progress_on=[tab.status])

    def choose(path):
        if not path:
            return gr.update(value=None), gr.skip()
        try:
            return gr.update(value=download_file(path)), gr.skip()
        except Exception as error:  # noqa: BLE001
            from ui.common import readable
            message = readable(error)
            gr.Warning(message)
            return gr.update(value=None), f"⚠️ {message}"

    tab.earlier.change(choose, tab.earlier, [tab.earlier_btn, tab.status], show_progress="hidden")
