"""Load: many open pages refreshing the Jobs tab of a real app while a real job trains (issue 22, point 5).

    python -m bench load [--clients 20] [--window 40] [--jobs 30]

A real app (`python -m ui`, with its own worker, as `python app.py` starts it) on a scratch workspace holding
--jobs finished jobs (200 logged steps each, bench.ui's history) and one real job training the quickstart preset
on the bundled model, logging every step. Each client is what one open browser page does: its own session
joins the page timer's refresh event through Gradio's queue every REFRESH_S (the gr.Timer's interval, or the
longer one a refresh sets when the app's refresh budget is spread over many pages, as a browser's timer follows it)
with the running job selected, and reads the result from the event stream; latency = join -> process_completed.
The clients run here, in one asyncio thread at nice +10 (a page on another machine costs the server the same
requests; here it also costs CPU, reported as "pages CPU %", which real remote browsers would not take).
Windows of --window seconds: idle (no clients), load, idle again. Training speed = the mean tokens/s the job
logged in a window; its ratio to the mean of the two idle windows. The app's CPU time per window says how much
work the refreshes cost. Target: p95 < 300 ms and training >= 0.9x of idle.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine_line, markdown_table, scratch_workspace
from bench.ui import pct, seed_jobs

ROOT = Path(__file__).resolve().parent.parent
PAGES_NICE = 10


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, LORASTUDIO_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    log = open(home / "bench-app.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "ui", "--port", str(port), "--skip-prepare"], cwd=ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited: {(home / 'bench-app.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the app did not answer within 180 s")


def stop(process: subprocess.Popen) -> None:
    import signal
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def submit_training(home: Path, model: str | None) -> str:
    """The quickstart preset, queued to the app's worker, long enough to outlast the windows."""
    env = dict(os.environ, LORASTUDIO_HOME=str(home))
    on_model = ["--set", f"model={model}"] if model else []
    result = subprocess.run([sys.executable, "-m", "cli", "train", "quickstart", *on_model,
                             "--set", "training.max_steps=100000",
                             "--set", "training.save_steps=100000", "--set", "training.logging_steps=1",
                             "--set", "training.eval_fraction=0"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"could not queue the training job: {result.stderr.strip()[-500:]}")
    return result.stdout.strip().splitlines()[-1]


def metrics_lines(home: Path, job_id: str) -> list[dict]:
    path = home / "runs" / job_id / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return [r for r in records if "tokens_per_second" in r]


def tick_event(url: str) -> tuple[int, int, int | None]:
    """The timer refresh's queue index, input count and the position of the timer among its outputs (a tick
    may set the page's refresh interval), from the page's own config (as the browser reads it)."""
    import httpx
    config = httpx.get(url + "/config", timeout=30).json()
    tick = next(d for d in config["dependencies"] if d.get("api_name") == "tick")
    timers = {c["id"] for c in config["components"] if c.get("type") == "timer"}
    timer_at = next((i for i, output in enumerate(tick["outputs"]) if output in timers), None)
    return tick["id"], len(tick["inputs"]), timer_at


async def page(url: str, event: tuple, job_id: str, until: float, latencies: list, errors: list,
               interval: float, intervals: list) -> None:
    """One open page: its timer's refresh every `interval` seconds from a random phase, and every new interval
    a refresh sets on the timer (as the browser's timer does)."""
    import httpx

    index, inputs, timer_at = event
    data = [job_id] + [None] * (inputs - 1)   # the selector's value; the rest are the page's server-side State
    session = f"bench-{random.getrandbits(48):x}"
    headers = {"Origin": url}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        await asyncio.sleep(random.uniform(0, interval))
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                joined = await http.post("/gradio_api/queue/join", json={
                    "data": data, "fn_index": index, "session_hash": session,
                    "event_data": None, "trigger_id": None})
                joined.raise_for_status()
                done = False
                async with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("data:"):
                            message = json.loads(line[5:])
                            if message.get("msg") == "process_completed":
                                done = message.get("success", True)
                                interval = _new_interval(message, timer_at) or interval
                                break
                if done:
                    latencies.append((time.monotonic() - started) * 1000)
                    intervals.append(interval)
                else:
                    errors.append("the refresh ended with an error (see the app's log)")
            except Exception as error:  # noqa: BLE001 - counted, the page goes on as a browser would
                errors.append(str(error)[:200])
            await asyncio.sleep(max(0.0, started + interval - time.monotonic()))


def _new_interval(message: dict, timer_at: int | None) -> float | None:
    if timer_at is None:
        return None
    update = (message.get("output") or {}).get("data", [None] * (timer_at + 1))[timer_at]
    value = update.get("value") if isinstance(update, dict) else None
    return float(value) if value else None


def run_clients(url: str, event: tuple, job_id: str, clients: int, seconds: float, interval: float):
    """The pages, in a thread at nice +PAGES_NICE: on a real deployment the browsers run on other machines, so
    here they should take as little as possible from the app and the training (their CPU time is reported)."""
    import threading

    latencies, errors, cpu, intervals = [], [], [], []
    until = time.monotonic() + seconds

    async def everyone():
        await asyncio.gather(*(page(url, event, job_id, until, latencies, errors, interval, intervals)
                               for _ in range(clients)))

    def run():
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PAGES_NICE)
        except (OSError, AttributeError):
            pass
        started = time.thread_time()
        asyncio.run(everyone())
        cpu.append(time.thread_time() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return latencies, errors, cpu[0] if cpu else 0.0, intervals


def measure_window(home: Path, url: str, event: tuple, job_id: str, app_pid: int, clients: int, seconds: float,
                   interval: float) -> dict:
    import psutil

    app = psutil.Process(app_pid)
    before_records = len(metrics_lines(home, job_id))
    cpu_before = sum(app.cpu_times()[:2])
    started = time.monotonic()
    pages_cpu = 0.0
    if clients:
        latencies, errors, pages_cpu, intervals = run_clients(url, event, job_id, clients, seconds, interval)
    else:
        latencies, errors, intervals = [], [], []
        time.sleep(seconds)
    elapsed = time.monotonic() - started
    cpu = sum(app.cpu_times()[:2]) - cpu_before
    records = metrics_lines(home, job_id)[before_records:]
    speeds = [r["tokens_per_second"] for r in records]
    return {"clients": clients, "seconds": elapsed, "refreshes": len(latencies), "errors": len(errors),
            "error_sample": errors[:1], "p50": statistics.median(latencies) if latencies else None,
            "p95": pct(latencies, 95) if latencies else None, "max": max(latencies) if latencies else None,
            "refreshes_per_s": len(latencies) / elapsed, "interval": max(intervals) if intervals else None,
            "steps": len(records), "tokens_per_s": statistics.mean(speeds) if speeds else None,
            "app_cpu_pct": 100 * cpu / elapsed, "pages_cpu_pct": 100 * pages_cpu / elapsed}


def main(clients: int = 20, window: float = 40.0, jobs: int = 30, interval: float | None = None,
         quick: bool = False, model: str | None = None) -> str:
    """`model`: a model folder to train instead of the bundled model (the tests' tiny one)."""
    from ui.jobs_tab import REFRESH_S

    interval = interval or REFRESH_S
    if quick:
        window = min(window, 20.0)
    with scratch_workspace() as home:
        from backend import data, models
        data.ensure_demo_datasets()
        trained = models.import_model(model, name="bench-model").name if model else models.ensure_bundled_model().name
        seed_jobs(jobs, running=False)
        job_id = submit_training(home, trained)   # queued before the app starts: its pages list it from the start
        app, url = start_app(home)
        try:
            deadline = time.monotonic() + 600
            while len(metrics_lines(home, job_id)) < 3:   # past model loading and the first steps
                if time.monotonic() > deadline:
                    raise RuntimeError("the training job logged no steps within 10 minutes")
                time.sleep(1)
            event = tick_event(url)
            windows = [("idle", 0), (f"{clients} pages", clients), ("idle again", 0)]
            results = [(name, measure_window(home, url, event, job_id, app.pid, n, window, interval))
                       for name, n in windows]
        finally:
            stop(app)
        app_log = (home / "bench-app.log").read_text(errors="replace")
    failure = app_log[app_log.rfind("Traceback"):].strip()[-1500:] if "Traceback" in app_log else ""
    idle = [r["tokens_per_s"] for _, r in results if r["clients"] == 0 and r["tokens_per_s"]]
    idle_speed = statistics.mean(idle) if idle else None
    rows = []
    for name, r in results:
        ratio = r["tokens_per_s"] / idle_speed if idle_speed and r["tokens_per_s"] else None
        rows.append([name, f"{r['seconds']:.0f}", r["refreshes"], f"{r['refreshes_per_s']:.1f}",
                     f"{r['interval']:g}" if r["interval"] else "-", r["errors"],
                     _ms(r["p50"]), _ms(r["p95"]), _ms(r["max"]), r["steps"],
                     f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else "-",
                     f"{ratio:.2f}" if ratio else "-", f"{r['app_cpu_pct']:.1f}",
                     f"{r['pages_cpu_pct']:.1f}" if r["clients"] else "-"])
    loaded = results[1][1]
    verdict = (f"Target: p95 < 300 ms and training >= 0.9x of idle with {clients} pages open "
               f"(each refreshing every {interval:g} s, or as often as the app's refresh budget lets it: every "
               f"{loaded['interval'] or interval:g} s here): p95 {_ms(loaded['p95'])} ms, training {rows[1][11]}x.")
    if loaded["error_sample"]:
        verdict += f" First error: {loaded['error_sample'][0]}"
        if failure:
            verdict += f"\n\nThe app's last traceback:\n```\n{failure}\n```"
    text = "\n".join([machine_line(), "",
                      f"{jobs + 1} jobs in the list; the running one (quickstart preset on {trained}) is selected.", "",
                      markdown_table(["window", "s", "refreshes", "refreshes/s", "page interval s", "errors",
                                      "p50 ms", "p95 ms", "max ms",
                                      "steps", "training tokens/s", "x idle", "app CPU %", "pages CPU %"],
                                     rows),
                      "", verdict])
    print(text)
    return text


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--window", type=float, default=40.0)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    main(clients=arguments.clients, window=arguments.window, jobs=arguments.jobs, quick=arguments.quick)
