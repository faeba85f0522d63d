"""The Gradio app: `build_app() -> gr.Blocks` and `launch(host, port, auth, share, max_upload_mb)`.

Security defaults: binds 127.0.0.1; a password with auth=("user", "pass") or LORASTUDIO_AUTH=user:pass; a
public share link only when share=True (with a warning); uploads capped at max_upload_mb; the server may
serve files only from the workspace's exports/ folder (besides Gradio's own upload cache), and of that only
finished downloads; no free-form argument box reaches model loading (every control maps to one JobConfig
field that validate() checks). `ui/guard.py` sits in front of every request: Host and Origin checks, no named
HTTP API, login throttling. Every event handler is private (none is listed in Gradio's API info, so the page
shown before sign-in carries nothing of the workspace either).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

TAB_DATA, TAB_TRAIN, TAB_JOBS, TAB_PLAYGROUND, TAB_EVALUATE, TAB_EXPORT, TAB_ADAPTERS, TAB_SERVE = (
    "data", "train", "jobs", "playground", "evaluate", "export", "adapters", "serve")
DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MAX_UPLOAD_MB = "127.0.0.1", 7860, 1024
TITLE = "LoRA Studio"

CSS = """
.ls-jobs { width: 100%; border-collapse: collapse; font-size: 0.92em; }
.ls-jobs th, .ls-jobs td { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.ls-preview pre { font-size: 0.85em; }
/* short columns of report tables (stage, usable, rows) must not wrap letter by letter */
.prose table th:not(:last-child), .prose table td:not(:last-child) { white-space: nowrap; }
/* Export: the progress bar is drawn on the status next to the button (show_progress_on), give it room */
.ls-export-actions { align-items: center; }
.ls-export-status { min-height: 2.75em; flex-grow: 1; }
/* Train: model and dataset show whole names; dropdown options stay on one line (the list grows instead) */
.ls-train-wide { min-width: 300px; }
.ls-train-wide input { text-overflow: ellipsis; }
.options .option-list li { white-space: nowrap; }
/* Playground: the full column title above each chat wraps instead of being cut */
.ls-col-title p { margin: 0; overflow-wrap: anywhere; }
"""

log = logging.getLogger("lorastudio.ui")


@dataclass
class Studio:
    """Every tab's components (typed attributes, no string ids)."""
    tabs: object
    timer: object
    data: object
    train: object
    jobs: object
    playground: object
    evaluate: object
    export: object
    adapters: object
    serve: object


def build_app() -> "gr.Blocks":  # noqa: F821
    import gradio as gr

    from ui import (adapters_tab, data_tab, evaluate_tab, export_tab, jobs_tab, playground_tab, serve_tab,
                    train_tab)
    from backend import workspace

    # exports are served in place (no copy of a multi-GB zip into Gradio's cache)
    gr.set_static_paths([str(workspace.exports_dir())])

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\nFine-tune a chat model in four steps: **Data** → **Train** → **Jobs** → "
                    "**Playground / Evaluate / Export / Adapters / Serve**. Everything stays on this machine.")
        timer = gr.Timer(jobs_tab.REFRESH_S)
        with gr.Tabs(selected=TAB_DATA) as tabs:
            with gr.Tab("1 · Data", id=TAB_DATA):
                data = data_tab.build(gr)
            with gr.Tab("2 · Train", id=TAB_TRAIN):
                train = train_tab.build(gr)
            with gr.Tab("3 · Jobs", id=TAB_JOBS):
                jobs = jobs_tab.build(gr)
            with gr.Tab("4 · Playground", id=TAB_PLAYGROUND) as playground_item:
                playground = playground_tab.build(gr)
            with gr.Tab("5 · Evaluate", id=TAB_EVALUATE) as evaluate_item:
                evaluate = evaluate_tab.build(gr)
            with gr.Tab("6 · Export", id=TAB_EXPORT) as export_item:
                export = export_tab.build(gr)
            with gr.Tab("7 · Adapters", id=TAB_ADAPTERS) as adapters_item:
                adapters = adapters_tab.build(gr)
            with gr.Tab("8 · Serve", id=TAB_SERVE) as serve_item:
                serve = serve_tab.build(gr)
        studio = Studio(tabs=tabs, timer=timer, data=data, train=train, jobs=jobs, playground=playground,
                        evaluate=evaluate, export=export, adapters=adapters, serve=serve)
        _wire_across_tabs(gr, studio)
        playground_tab.wire(gr, playground, playground_item)
        evaluate_tab.wire(gr, evaluate, evaluate_item)
        export_tab.wire(gr, export, export_item)
        adapters_tab.wire(gr, adapters, adapters_item)
        serve_tab.wire(gr, serve, serve_item)
    for fn in app.fns.values():   # the page calls its handlers through the queue; nothing is a public API
        fn.api_visibility = "private"
    app.studio = studio   # for tests
    return app


def _wire_across_tabs(gr, s: Studio) -> None:
    from ui import data_tab, jobs_tab, train_tab
    from ui.common import dataset_choices

    # Train -> Start -> Jobs tab with the new job selected
    def on_started(job_id):
        rows = jobs_tab.job_rows()
        return {s.tabs: gr.Tabs(selected=TAB_JOBS),
                s.jobs.selector: gr.update(choices=jobs_tab.job_choices(rows), value=job_id),
                s.jobs.table: jobs_tab.jobs_table_html(rows), s.jobs.detail: jobs_tab.job_detail_markdown(job_id),
                s.jobs.chart: jobs_tab.metrics_figure(job_id), s.jobs.signature: jobs_tab.metrics_signature(job_id),
                s.jobs.sent: None}

    train_tab.wire_start(gr, s.train, [s.tabs, s.jobs.selector, s.jobs.table, s.jobs.detail, s.jobs.chart,
                                       s.jobs.signature, s.jobs.sent], on_started)

    # Jobs -> Clone -> Train form filled, Train tab shown
    train_inputs = s.train.inputs()
    tick, tick_inputs, tick_outputs = jobs_tab.wire(
        gr, s.jobs, s.timer, [s.tabs, *train_inputs],
        lambda data: {s.tabs: gr.Tabs(selected=TAB_TRAIN), **s.train.form_values(data)})

    # Data -> Use in Train form
    data_tab.wire_use(gr, s.data, s.train.fields["dataset"], s.train.fields["stage"], [s.tabs],
                      lambda: [gr.Tabs(selected=TAB_TRAIN)])

    # Page load: fresh state from the backend (reload / second browser / restart show the same thing)
    def on_load(preset, *values):
        yaml_text, command, estimate = train_tab.previews(train_tab.form_to_config_dict(list(values)), preset)
        return (yaml_text, command, estimate, gr.update(choices=train_tab.model_choices()),
                gr.update(choices=dataset_choices()), gr.update(choices=data_tab.source_choices()))

    blocks = gr.context.Context.root_block   # the gr.Blocks being built (this runs inside its `with`)
    blocks.load(on_load, [s.train.preset, *train_inputs],
                [s.train.yaml_view, s.train.command_view, s.train.estimate, s.train.fields["model"],
                 s.train.fields["dataset"], s.data.source], show_progress="hidden")
    blocks.load(tick, tick_inputs, tick_outputs, show_progress="hidden")


def parse_auth(auth: str | tuple | None) -> tuple[str, str] | None:
    """'user:pass' (or LORASTUDIO_AUTH) -> (user, pass); None = no password."""
    auth = auth if auth is not None else (os.environ.get("LORASTUDIO_AUTH") or None)
    if auth is None or isinstance(auth, tuple):
        return auth
    user, sep, password = str(auth).partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth / LORASTUDIO_AUTH: expected user:password, e.g. --auth admin:s3cret")
    return user, password


def launch(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, auth=None, share: bool = False,
           max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, prevent_thread_lock: bool = False,
           allowed_hosts: str | None = None):
    """Start the web server. Returns the Blocks (with prevent_thread_lock=True the call returns at once).
    `allowed_hosts`: comma-separated names besides this machine's that requests may use (a reverse proxy's
    name); None reads LORASTUDIO_ALLOWED_HOSTS."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["LORASTUDIO_MAX_UPLOAD_MB"] = str(max_upload_mb)   # the data readers enforce it too
    from starlette.middleware import Middleware

    from backend import export, workspace
    from ui import guard

    credentials = parse_auth(auth)
    # a share link arrives through Gradio's relay under a name only known once it exists: it is public anyway
    trusted = guard.parse_allowed_hosts(allowed_hosts) | ({"*"} if share else set())
    front_door = Middleware(guard.Guard, allowed=guard.allowed_hosts(host), trusted=trusted,
                            exports_dir=workspace.exports_dir(), is_download=export.is_download)
    if share:
        print("WARNING: --share creates a PUBLIC link through Gradio's relay: anyone with the link can use this "
              "studio and the machine's GPUs" + ("" if credentials else "; add --auth user:pass") + ".",
              file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not credentials:
        print(f"WARNING: listening on {host} without a password; anyone on the network can use this studio. "
              "Add --auth user:pass or set LORASTUDIO_AUTH.", file=sys.stderr, flush=True)
    app = build_app()
    app.queue(default_concurrency_limit=4)
    import gradio as gr
    app.launch(server_name=host, server_port=port, auth=credentials, share=bool(share),
               max_file_size=f"{int(max_upload_mb)}mb" if max_upload_mb else None,
               allowed_paths=[str(workspace.exports_dir())], show_error=False, ssr_mode=False,
               prevent_thread_lock=prevent_thread_lock, quiet=True, css=CSS, theme=gr.themes.Soft(),
               app_kwargs={"middleware": [front_door]}, footer_links=["gradio", "settings"], run_history=False,
               auth_message="LoRA Studio: sign in with the user and password given to --auth / LORASTUDIO_AUTH.")
    return app
