"""Playground and export cost: generation speed of the base / adapter / merged columns, and the one-click
export against the bare `merge_and_unload()` + `save_pretrained()` a user would script.

    python -m bench.playground [--quick] [--model smollm2-135m-instruct]
    python -m bench.playground --streaming     # the Playground tab's streaming path vs the bare generate (4.)

1. A short LoRA job (all-linear, r=16) trains on the identity demo (the adapter's values do not matter here).
2. Generation: the same prompt, greedy, exactly N new tokens, through each column of one playground session,
   columns rotated each round; tokens/s = N / wall time. Targets: merged / base >= 0.98, adapter / base >= 0.8.
3. Export: each arm in a fresh subprocess, alternating: wall time and peak RSS above the process baseline (after
   imports, before loading). Target: studio / bare <= 1.2 time, no extra full copy of the weights in memory.
4. (--streaming) The tab's path against step 2's: stream_answer, then ui answer_turn with every update
   post-processed as Gradio's server does, one update per token vs the tab's STREAM_INTERVAL_S (streaming_gap).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_line, markdown_table, median, scratch_workspace

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def train_job(model: str, steps: int) -> str:
    from backend import jobs
    from backend.jobs import runner
    from backend.config import JobConfig

    config = JobConfig.from_dict({
        "model": model, "dataset": "identity-demo", "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": steps, "batch_size": 2, "max_length": 256, "eval_fraction": 0.0,
                     "save_steps": steps + 1, "learning_rate": 3e-4}})
    job = jobs.create(config, status="running")
    done = runner.run_job(job.id)
    if done.status != "completed":
        raise RuntimeError(f"benchmark job failed: {done.reason}")
    return job.id


def generation_speeds(job_id: str, new_tokens: int, rounds: int) -> dict[str, list[float]]:
    import torch

    from backend.serve import playground

    session = playground.open_session(job_id, verify=False)
    ids = session.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
    speeds: dict[str, list[float]] = {c.key: [] for c in session.columns}
    keys = [c.key for c in session.columns]
    for round_ in range(rounds + 1):                       # round 0 warms up and is not counted
        order = keys[round_ % len(keys):] + keys[:round_ % len(keys)]
        for key in order:
            column = session.column(key)
            model = column.model
            context = model.disable_adapter() if not column.use_adapter else _Null()
            with context, torch.no_grad():
                started = time.perf_counter()
                model.generate(**ids.to(model.device), do_sample=False, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, pad_token_id=session.tokenizer.pad_token_id)
                seconds = time.perf_counter() - started
            if round_:
                speeds[key].append(new_tokens / seconds)
    playground.close_session()
    return speeds


def streaming_gap(job_id: str, new_tokens: int = 64, rounds: int = 2) -> dict:
    """The Playground's streaming path against the bench's bare generate, in one process on one session.

    Arms (each answers the three columns one after the other, as the tab does), tokens/s = tokens / wall time:
    - generate: `model.generate` with exactly N new tokens (what `generation_speeds` measures);
    - stream_answer: the same through backend.serve.chat (TextIteratorStreamer in a generation thread);
    - generate in a second thread: the same call from a new thread (the tab generates off the main thread);
    - ui before: `ui.playground_tab.answer_turn` with one update per streamed piece, each update post-processed
      as Gradio's server does (every Chatbot's value through `Chatbot.postprocess` + JSON);
    - ui now: the tab's update interval (`STREAM_INTERVAL_S`), only the live column's chat post-processed.
    Also the torch thread counts seen by the main thread and by a generation thread.
    """
    import threading

    import gradio as gr
    import torch

    from backend.serve import playground
    from backend.serve.chat import GenerationSettings
    from ui import playground_tab as pg

    session = playground.open_session(job_id, verify=False)
    settings = GenerationSettings(max_new_tokens=new_tokens)
    with gr.Blocks():
        chats = [gr.Chatbot() for _ in session.columns]
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(thread=torch.get_num_threads()))
    thread.start()
    thread.join()
    threads = {"main": torch.get_num_threads(), "new thread": seen["thread"],
               "interop": torch.get_num_interop_threads(), "cpu_count": os.cpu_count()}
    ids = session.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)

    def bare():
        tokens, started = 0, time.perf_counter()
        for column in session.columns:
            model = column.model
            if column.adapter_name:
                model.set_adapter(column.adapter_name)
            context = model.disable_adapter() if not column.use_adapter else _Null()
            with context, torch.no_grad():
                out = model.generate(**ids.to(model.device), do_sample=False, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, pad_token_id=session.tokenizer.pad_token_id)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
        return tokens, time.perf_counter() - started, 0

    def streamed():
        tokens, started = 0, time.perf_counter()
        for column in session.columns:
            last = None
            for last in session.stream(column.key, PROMPT, settings):
                pass
            tokens += last.tokens
        return tokens, time.perf_counter() - started, 0

    def threaded():
        out = []
        worker = threading.Thread(target=lambda: out.append(bare()))
        worker.start()
        worker.join()
        return out[0]

    def ui(interval, live_only):
        def run():
            started, updates = time.perf_counter(), 0
            histories = lines = None
            for histories, lines in pg.answer_turn(session, pg.new_histories(), settings, PROMPT[0]["content"],
                                                   interval=interval):
                updates += 1
                live = max((i for i, line in enumerate(lines) if line), default=0)   # as pg.streaming_update
                shown = [(chats[live], histories[live])] if live_only else list(zip(chats, histories))
                json.dumps([chat.postprocess(h).model_dump() for chat, h in shown] + list(lines), default=str)
            seconds = time.perf_counter() - started
            tokens = sum(int(line.split(" tokens")[0].split(" · ")[-1]) for line in lines)
            return tokens, seconds, updates
        return run

    arms = {"generate (bench path)": bare, "generate in a second thread": threaded,
            "stream_answer (TextIteratorStreamer)": streamed,
            "ui: an update per token, all 3 chats (before)": ui(0.0, False),
            f"ui: updates every {pg.STREAM_INTERVAL_S:g} s, live chat only (now)": ui(None, True)}
    results = {name: [] for name in arms}
    updates = {name: 0 for name in arms}
    for round_ in range(rounds + 1):
        names = list(arms)
        names = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in names:
            tokens, seconds, count = arms[name]()
            if round_:                                      # round 0 warms up
                results[name].append(tokens / seconds)
                updates[name] = count
    playground.close_session()
    return {"speeds": results, "updates": updates, "threads": threads}


def streaming_main(model: str = "smollm2-135m-instruct", steps: int = 2, new_tokens: int = 64,
                   rounds: int = 2) -> str:
    with scratch_workspace():
        if model == "smollm2-135m-instruct":
            from backend import models
            models.ensure_bundled_model()
        job_id = train_job(model, steps)
        gap = streaming_gap(job_id, new_tokens, rounds)
    speeds = gap["speeds"]
    first = median(next(iter(speeds.values())))
    table = markdown_table(["path (3 columns, one after the other)", "tokens/s (median)", "ratio to generate",
                            "updates per turn", "all runs"],
                           [[name, median(v), median(v) / first, gap["updates"][name] or "", _runs(v)]
                            for name, v in speeds.items()])
    text = (f"### Playground streaming vs bench generate ({model}, {new_tokens} new tokens per column, "
            f"{rounds} rounds)\n\n{machine_line()}\n\n{table}\n\ntorch threads: {gap['threads']}\n")
    print(text)
    return text


_BEFORE = """
from ui import playground_tab as pg
pg.STREAM_INTERVAL_S = 0.0   # one update per streamed piece, every chat and stats line in each update
pg.streaming_update = lambda tab, h, lines: {tab.histories: h, **dict(zip(tab.chats, h)), **dict(zip(tab.stats, lines))}
"""


def browser_speeds(job_id: str, home: Path, turns: int = 2, shots: Path | None = None) -> dict:
    """The tok/s a browser shows under each column: the real app (`python -m ui --no-workers`, its default
    threads) driven by headless chromium on the same machine, before (an update per token, all chats) and now.
    Each variant: a first turn (loads the models), then `turns` regenerations; the stats of the last are kept."""
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        for variant in ("before", "now"):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            code = (_BEFORE if variant == "before" else "") + (
                f"from ui.__main__ import main\nmain(['--no-workers', '--skip-prepare', '--port', '{port}'])")
            log = open(home / f"app-{variant}.log", "w")
            app = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                                   env=dict(os.environ, LORASTUDIO_HOME=str(home)), stdout=log,
                                   stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}/"
                for _ in range(240):
                    try:
                        urllib.request.urlopen(url, timeout=2)
                        break
                    except OSError:
                        time.sleep(0.5)
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.goto(url)
                page.get_by_role("tab", name="4 · Playground").click()
                page.wait_for_function(f"() => [...document.querySelectorAll('.ls-pg-job input')]"
                                       f".some(i => i.value.includes('{job_id}'))", timeout=60_000)
                page.locator(".ls-pg-message textarea").fill(PROMPT[0]["content"])
                done = ("() => { const s = document.querySelector('.ls-stats-2'); return s && /tokens/.test(s.innerText)"
                        " && !s.innerText.includes('⏳'); }")
                page.locator("button.ls-pg-send").click()
                page.wait_for_function(done, timeout=600_000)
                for _ in range(turns):
                    page.locator("button.ls-pg-regenerate").click()
                    page.wait_for_function("() => document.querySelector('.ls-stats-0')?.innerText.includes('⏳')",
                                           timeout=60_000)
                    page.wait_for_function(done, timeout=600_000)
                lines = [page.locator(f".ls-stats-{i}").first.inner_text() for i in range(3)]
                out[variant] = [float(line.split(" tok/s")[0].split(" · ")[-1]) for line in lines]
                if shots is not None and variant == "now":
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / "playground.png"), full_page=True)
                    for tab, name in (("2 · Train", "train"), ("5 · Export", "export")):
                        page.get_by_role("tab", name=tab).click()
                        page.wait_for_timeout(1500)
                        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                page.close()
            finally:
                app.terminate()
                app.wait(30)
        browser.close()
    return out


def browser_main(model: str = "smollm2-135m-instruct", shots: str | None = None) -> str:
    with scratch_workspace() as home:
        from backend import data, models
        if model == "smollm2-135m-instruct":
            models.ensure_bundled_model()
        data.ensure_demo_datasets()
        job_id = train_job(model, 2)
        speeds = browser_speeds(job_id, home, shots=Path(shots) if shots else None)
    table = markdown_table(["app", "base tok/s", "adapter tok/s", "merged tok/s"],
                           [[variant, *values] for variant, values in speeds.items()])
    text = (f"### Playground in a browser ({model}, 128 new tokens at most, the app and chromium on this machine)"
            f"\n\n{machine_line()}\n\n{table}\n")
    print(text)
    return text


def export_arm(arm: str, job_id: str) -> dict:
    """Runs in a fresh process (see main): one export, its wall time and peak memory above the baseline."""
    import torch  # noqa: F401 - imported before the baseline, like everything the arms share

    import peft  # noqa: F401
    import transformers  # noqa: F401

    from backend import export, models, workspace
    from backend.models import adapters

    baseline = _vm_kib("VmRSS")
    started = time.perf_counter()
    phases = {}
    if arm == "studio":
        result = export.export_job(job_id, "merged", "float32",
                                   progress=lambda f, text: phases.setdefault(text.split(" (")[0].split(" ")[0]
                                                                              if text.startswith("zipping")
                                                                              else text.split(" (")[0],
                                                                              time.perf_counter() - started))
        size = sum(p.stat().st_size for p in result.folder.glob("*.safetensors"))
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        source = adapters.adapter_source(job_id)
        base = AutoModelForCausalLM.from_pretrained(models.resolve(source.config.model).path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(source.path)).merge_and_unload()
        out = workspace.exports_dir() / "bare"
        merged.save_pretrained(out, safe_serialization=True)
        size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {"seconds": time.perf_counter() - started, "peak_mib": (_vm_kib("VmHWM") - baseline) / 1024,
            "weights_mib": size / 2 ** 20, "phases": phases}


def run_export_arm(arm: str, job_id: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    out = subprocess.run([sys.executable, "-m", "bench.playground", "--arm", arm, "--job", job_id],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise RuntimeError(f"export arm {arm} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(quick: bool = False, model: str = "smollm2-135m-instruct", steps: int | None = None,
         new_tokens: int | None = None, rounds: int | None = None) -> str:
    steps = steps or (4 if quick else 10)
    new_tokens = new_tokens or (32 if quick else 64)
    rounds = rounds or (1 if quick else 3)
    with scratch_workspace():
        if model == "smollm2-135m-instruct":
            from backend import models
            models.ensure_bundled_model()
        job_id = train_job(model, steps)
        speeds = generation_speeds(job_id, new_tokens, rounds)
        studio, bare = [], []
        for _ in range(1 if quick else 2):                 # alternate the arms
            studio.append(run_export_arm("studio", job_id))
            bare.append(run_export_arm("bare", job_id))
    base = median(speeds["base"])
    generation = markdown_table(
        ["column", "tokens/s (median)", "ratio to base", "target", "all runs"],
        [["base (adapter disabled)", base, 1.0, "", _runs(speeds["base"])],
         ["adapter (unmerged)", median(speeds["adapter"]), median(speeds["adapter"]) / base, ">= 0.8",
          _runs(speeds["adapter"])],
         ["merged", median(speeds["merged"]), median(speeds["merged"]) / base, ">= 0.98", _runs(speeds["merged"])]])
    s_time, b_time = median([r["seconds"] for r in studio]), median([r["seconds"] for r in bare])
    s_peak, b_peak = median([r["peak_mib"] for r in studio]), median([r["peak_mib"] for r in bare])
    weights = studio[0]["weights_mib"]
    exports = markdown_table(
        ["arm", "seconds (median)", "peak RSS above baseline, MiB", "peak / weights", "runs"],
        [["LoRA Studio export (load, verify, merge, save, zip)", s_time, s_peak, s_peak / weights, len(studio)],
         ["bare merge_and_unload + save_pretrained", b_time, b_peak, b_peak / weights, len(bare)],
         ["ratio studio / bare", s_time / b_time, s_peak / b_peak, "", "target time <= 1.2"]])
    phases = ", ".join(f"{name} at {seconds:.1f} s" for name, seconds in studio[-1]["phases"].items())
    extra = _verify_and_zip_seconds(studio[-1]["phases"], studio[-1]["seconds"])
    text = (f"### Playground and export ({model}, LoRA r=16 all-linear, float32, {new_tokens} new tokens, "
            f"{rounds} rounds)\n\n{machine_line()}\n\n{generation}\n\n{exports}\n\n"
            f"Weights: {weights:.0f} MiB. Studio export phases (last run): {phases}. Of the last run's "
            f"{studio[-1]['seconds']:.1f} s, the merge verification took {extra[0]:.1f} s and the zip {extra[1]:.1f} s; "
            f"the rest (load, merge, save, card) took {studio[-1]['seconds'] - sum(extra):.1f} s, "
            f"{(studio[-1]['seconds'] - sum(extra)) / b_time:.2f}x the bare arm's median.\n")
    print(text)
    return text


def _verify_and_zip_seconds(phases: dict, total: float) -> tuple[float, float]:
    """Seconds spent verifying (both probes) and zipping, from the progress timestamps of one export."""
    at = phases.get
    try:
        verify = (at("merging the adapter into the weights") - at("verifying: adapter answers")
                  + at("saving safetensors") - at("verifying: merged answers"))
        return verify, total - at("zipping")
    except TypeError:   # a phase missing (a changed progress text): report nothing rather than a wrong split
        return 0.0, 0.0


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--arm", choices=["studio", "bare"], help=argparse.SUPPRESS)   # internal: one export arm
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true",
                        help="only the Playground streaming path against the bare generate (streaming_gap)")
    parser.add_argument("--browser", metavar="SHOTS", nargs="?", const="",
                        help="the tok/s the app shows in headless chromium, before / now (screenshots into SHOTS)")
    args = parser.parse_args()
    if args.browser is not None:
        browser_main(args.model, args.browser or None)
    elif args.streaming:
        streaming_main(args.model)
    elif args.arm:
        print(json.dumps(export_arm(args.arm, args.job)))
    else:
        main(args.quick, args.model)
