"""Serve tab: the trained adapters behind an OpenAI-compatible API on this machine, started and stopped here.

The server is `lorastudio serve` as a process of its own (backend/serve/launcher.py): one base model loaded
once, the picked jobs' adapters loaded at start and any other finished job's on its first request. The tab shows
whether it runs, the adapters in memory (load time, weight size, requests), the latest requests with their
latency, copy-paste snippets for curl and the openai client, and the same adapters as vLLM and llama.cpp
server command lines. It refreshes on its Refresh button and when the tab is opened, not on a timer (the
Jobs tab's refresh budget, ui/shared_view.py).

Handlers are plain functions (tested without a browser); `build()` makes the components, `wire()` connects them.
"""
from __future__ import annotations

import html
import json
import statistics
from dataclasses import dataclass

from backend.serve import commands, launcher
from ui.common import UserError, fmt_duration, md_escape, readable

RECENT_SHOWN = 12


def adapter_choices() -> list[tuple[str, str]]:
    """(label, job id) of every job with a final adapter, newest first, with its base model."""
    from backend import jobs
    out = []
    for job in jobs.list_jobs():
        if (job.run_dir / "adapter" / "adapter_config.json").is_file():
            name = f" · {job.name}" if job.name else ""
            out.append((f"{job.id}{name} · {job.config.model} · {job.config.method}", job.id))
    return out


def base_of(job_ids: list[str]) -> str | None:
    """The one base model of the picked jobs (None: none picked); one sentence when they differ."""
    from backend import jobs
    bases = {}
    for job_id in job_ids:
        job = jobs.get(job_id)
        if job is None:
            raise UserError(f"job {job_id} no longer exists: refresh the tab")
        bases.setdefault(job.config.model, []).append(job_id)
    if len(bases) > 1:
        listed = "; ".join(f"{', '.join(ids)} on {base}" for base, ids in bases.items())
        raise UserError(f"one server serves one base model, but the picked jobs were trained on {len(bases)} "
                        f"({listed}): pick the jobs of one base")
    return next(iter(bases), None)


def start_server(job_ids: list[str] | None, port, api_key: str | None, max_adapters, progress=None) -> str:
    job_ids = list(job_ids or [])
    try:
        port = int(port)
        max_adapters = int(max_adapters)
    except (TypeError, ValueError):
        raise UserError("port and adapters in memory must be whole numbers") from None
    settings = launcher.ServerSettings(model=base_of(job_ids), adapters=tuple(job_ids), port=port,
                                       api_key=(api_key or "").strip() or None, max_adapters=max(1, max_adapters))
    state = launcher.start(settings, progress=progress)
    return f"Serving on {state.url}."


def stop_server() -> str:
    return launcher.stop()


# ---------------------------------------------------------------- what the tab shows

def status_view() -> dict:
    """{"status": markdown, "adapters": html, "requests": html, "curl": text, "python": text} of the server."""
    state = launcher.current()
    if state is None:
        return {"status": "**Not running.** Pick adapters (or none, for the base model alone) and press Start.",
                "adapters": "", "requests": "", "curl": snippet_curl(None), "python": snippet_python(None)}
    stats = launcher.stats(state)
    if stats is None:
        return {"status": f"**Starting** on `{state.url}` (pid {state.pid}): loading the model…",
                "adapters": "", "requests": "", "curl": snippet_curl(state), "python": snippet_python(state)}
    example = (stats["adapters"][0]["name"] if stats["adapters"] else stats["model"])
    key = "required (Bearer)" if state.api_key else "none (this machine only)"
    status = (f"**Serving** `{md_escape(stats['model'])}` on `{state.url}` · pid {state.pid} · API key: {key} · "
              f"base loaded in {stats['base_load_ms'] / 1000:.1f} s · up to {stats['max_adapters']} adapters in "
              f"memory; any finished job on this base loads on its first request.")
    return {"status": status, "adapters": adapters_table(stats), "requests": requests_table(stats),
            "curl": snippet_curl(state, example), "python": snippet_python(state, example)}


def adapters_table(stats: dict) -> str:
    if not stats["adapters"]:
        return "<p>No adapter in memory yet: the base answers; an adapter loads on its first request.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(a['name'])}</td><td>{html.escape(a['label'])}</td><td>{a['load_ms']:.0f}</td>"
        f"<td>{a['weight_bytes'] / 2**20:.2f}</td><td>{a['requests']}</td><td>{a['loads']}</td></tr>"
        for a in reversed(stats["adapters"]))   # most recently used first
    return ("<table><tr><th>adapter (model id)</th><th>what</th><th>load ms</th><th>weights MiB</th>"
            f"<th>requests</th><th>loads</th></tr>{rows}</table>")


def requests_table(stats: dict) -> str:
    recent = stats["requests"]
    if not recent:
        return "<p>No request yet.</p>"
    seconds = [r["seconds"] for r in recent]
    summary = (f"<p>{len(recent)} requests · latency p50 {statistics.median(seconds):.2f} s"
               + (f" · p95 {sorted(seconds)[int(0.95 * (len(seconds) - 1))]:.2f} s" if len(seconds) > 1 else "")
               + "</p>")
    rows = "".join(
        f"<tr><td>{html.escape(r['model'])}</td><td>{r['prompt_tokens']}</td><td>{r['completion_tokens']}</td>"
        f"<td>{fmt_duration(r['first_token_s']) if r['first_token_s'] is not None else '-'}</td>"
        f"<td>{r['seconds']:.2f}</td><td>{html.escape(r['finish_reason'])}</td></tr>"
        for r in reversed(recent[-RECENT_SHOWN:]))
    return (summary + "<table><tr><th>model</th><th>prompt tokens</th><th>answer tokens</th><th>first token</th>"
            f"<th>seconds</th><th>finish</th></tr>{rows}</table>")


def snippet_curl(state, model: str = "MODEL") -> str:
    url = state.url if state else f"http://127.0.0.1:{launcher.DEFAULT_PORT}/v1"
    key = " -H 'Authorization: Bearer YOUR_KEY'" if state and state.api_key else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Who are you?"}],
                       "temperature": 0, "max_tokens": 64})
    return (f"curl {url}/models{key}\n\n"
            f"curl {url}/chat/completions{key} -H 'Content-Type: application/json' \\\n  -d '{body}'")


def snippet_python(state, model: str = "MODEL") -> str:
    url = state.url if state else f"http://127.0.0.1:{launcher.DEFAULT_PORT}/v1"
    key = '"YOUR_KEY"' if state and state.api_key else '"none"  # no key needed on 127.0.0.1'
    return (f"from openai import OpenAI\n\nclient = OpenAI(base_url=\"{url}\", api_key={key})\n"
            "print([m.id for m in client.models.list()])   # the base and every finished job on it\n"
            f"answer = client.chat.completions.create(model=\"{model}\", temperature=0, max_tokens=64,\n"
            "    messages=[{\"role\": \"user\", \"content\": \"Who are you?\"}])\n"
            "print(answer.choices[0].message.content)")


def engine_lines(job_ids: list[str] | None) -> str:
    """The picked adapters as vLLM and llama.cpp server command lines (markdown)."""
    from backend import jobs, models
    job_ids = list(job_ids or [])
    if not job_ids:
        return "Pick adapters to see the same ones as vLLM and llama.cpp server commands."
    try:
        base = base_of(job_ids)
        model_path = models.resolve(base).path
    except Exception as error:  # noqa: BLE001 - shown as the sentence it is
        return f"⚠️ {readable(error)}"
    found = [commands.vllm(model_path, {j: jobs.get(j).run_dir / "adapter" for j in job_ids}),
             commands.llama_server(job_ids)]
    parts = []
    for line in found:
        if line.command:
            parts.append(f"**{line.engine}** ({md_escape(line.why)}):\n```\n{line.command}\n```")
        else:
            parts.append(f"**{line.engine}**: {md_escape(line.why)}.")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- components and wiring

@dataclass
class ServeTab:
    adapters: object = None
    port: object = None
    api_key: object = None
    max_adapters: object = None
    start_btn: object = None
    stop_btn: object = None
    refresh_btn: object = None
    status: object = None
    loaded: object = None
    requests: object = None
    curl: object = None
    python: object = None
    engines: object = None


def build(gr) -> ServeTab:
    tab = ServeTab()
    try:
        choices, view = adapter_choices(), status_view()
    except Exception:  # noqa: BLE001 - an unreadable workspace must not stop the app from building
        choices, view = [], {"status": "", "adapters": "", "requests": "", "curl": "", "python": ""}
    gr.Markdown("An **OpenAI-compatible API** on this machine: one base model, your finished jobs' adapters on it. "
                "A request's `model` is a job id (or the base's name); the answers equal the Playground's for the "
                "same settings.")
    with gr.Row():
        tab.adapters = gr.Dropdown(choices, value=[], multiselect=True, label="adapters loaded at start", scale=4,
                                   info="Jobs of one base model. Any other finished job on it loads on its first "
                                        "request.", elem_classes=["ls-serve-adapters"])
        tab.port = gr.Number(launcher.DEFAULT_PORT, precision=0, label="port", scale=1, minimum=1024,
                             maximum=65535)
        tab.max_adapters = gr.Number(4, precision=0, label="adapters in memory", scale=1, minimum=1, maximum=64,
                                     info="least recently used unloaded first")
        tab.api_key = gr.Textbox(label="API key (optional)", type="password", scale=2,
                                 info="clients then send it as 'Authorization: Bearer KEY'")
    with gr.Row(equal_height=True):
        tab.start_btn = gr.Button("Start server", variant="primary", scale=0, min_width=160,
                                  elem_classes=["ls-serve-start"])
        tab.stop_btn = gr.Button("Stop server", scale=0, min_width=140, elem_classes=["ls-serve-stop"])
        tab.refresh_btn = gr.Button("Refresh", scale=0, min_width=120)
        tab.status = gr.Markdown(view["status"], elem_classes=["ls-serve-status"])
    with gr.Row():
        tab.loaded = gr.HTML(view["adapters"], label="adapters in memory", elem_classes=["ls-serve-loaded"])
        tab.requests = gr.HTML(view["requests"], label="recent requests", elem_classes=["ls-serve-requests"])
    with gr.Row():
        tab.curl = gr.Code(view["curl"], language="shell", label="curl", interactive=False)
        tab.python = gr.Code(view["python"], language="python", label="Python (openai client)", interactive=False)
    with gr.Accordion("The same adapters in other engines", open=False):
        tab.engines = gr.Markdown(engine_lines([]), elem_classes=["ls-serve-engines"])
    return tab


def wire(gr, tab: ServeTab, tab_item=None) -> None:
    view_outputs = [tab.status, tab.loaded, tab.requests, tab.curl, tab.python]

    def shown(view: dict, status: str | None = None):
        return (status or view["status"], view["adapters"], view["requests"], view["curl"], view["python"])

    def refresh(current):
        choices = adapter_choices()
        ids = {value for _, value in choices}
        return (gr.update(choices=choices, value=[j for j in (current or []) if j in ids]),
                *shown(status_view()))

    refresh_outputs = [tab.adapters, *view_outputs]
    if tab_item is not None:
        tab_item.select(refresh, tab.adapters, refresh_outputs, show_progress="hidden")
    tab.refresh_btn.click(refresh, tab.adapters, refresh_outputs, show_progress="hidden")
    tab.adapters.change(engine_lines, tab.adapters, tab.engines, show_progress="hidden")

    def do_start(job_ids, port, api_key, max_adapters, progress=gr.Progress()):
        try:
            message = start_server(job_ids, port, api_key, max_adapters,
                                   progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as error:  # noqa: BLE001 - one sentence in the page
            gr.Warning(readable(error))
            return shown(status_view(), f"⚠️ {readable(error)}")
        gr.Info(message)
        return shown(status_view())

    tab.start_btn.click(do_start, [tab.adapters, tab.port, tab.api_key, tab.max_adapters], view_outputs,
                        show_progress_on=[tab.status])

    def do_stop():
        message = stop_server()
        gr.Info(message)
        return shown(status_view(), message)

    tab.stop_btn.click(do_stop, None, view_outputs, show_progress="hidden")
