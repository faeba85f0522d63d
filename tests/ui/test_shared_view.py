"""Many open pages share one refresh: values are built once per change, and a page is sent only what changed."""
from __future__ import annotations

import json
import threading
import time

from backend import jobs
from ui import jobs_tab
from ui.shared_view import RefreshBudget, SharedView, file_key
from tests.ui.test_jobs_handlers import make_job


def test_twenty_pages_asking_at_once_build_a_value_once(tmp_path):
    view = SharedView(max_age_s=60)
    built = []

    def slow_build():
        built.append(1)
        time.sleep(0.05)
        return "the table"

    answers = []
    pages = [threading.Thread(target=lambda: answers.append(view.get("list", ("db", 1), slow_build)))
             for _ in range(20)]
    for page in pages:
        page.start()
    for page in pages:
        page.join()
    assert answers == ["the table"] * 20 and len(built) == 1
    assert view.get("list", ("db", 2), lambda: "changed") == "changed", "a new key rebuilds"
    expiring = SharedView(max_age_s=0.05)
    expiring.get("x", 1, lambda: "old")
    time.sleep(0.06)
    assert expiring.get("x", 1, lambda: "new") == "new", "a value older than max_age_s is rebuilt"
    path = tmp_path / "f"
    assert file_key(path) == (None,)
    path.write_text("a")
    first = file_key(path)
    path.write_text("ab")
    assert file_key(path) != first


def test_refreshes_of_many_pages_read_the_jobs_once_until_something_changes(workspace, monkeypatch):
    running = make_job("running", 3)
    make_job("completed", 5, results={"final_train_loss": 0.5})
    reads = []
    real_rows = jobs_tab.job_rows
    monkeypatch.setattr(jobs_tab, "job_rows", lambda: reads.append(1) or real_rows())
    jobs_tab._shared.clear()
    pages = [jobs_tab.refresh(running.id, None, None) for _ in range(20)]
    assert len(reads) == 1 and len({page.table_html for page in pages}) == 1
    assert pages[0].figure is not None and json.loads(pages[0].figure)["data"], "the chart, as Plotly JSON"
    jobs.update(running.id, step=4)                      # the worker records a step
    assert running.id in jobs_tab.refresh(running.id, None, None).table_html and len(reads) == 2


def test_a_page_is_sent_only_what_changed_since_its_last_tick(workspace):
    job = make_job("running", 3)
    first = jobs_tab.plan_tick(job.id, None, None, None, None, None)
    assert set(first.resend) == {"table", "detail", "log"}, "a new page gets everything"
    again = jobs_tab.plan_tick(job.id, first.result.statuses, first.result.signature, first.choices, None,
                               first.sent)
    assert again.resend == () and again.result.figure is None, "nothing changed: nothing sent"
    (job.run_dir / "train.log").write_text("step 4 done\n")
    with open(job.run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 4, "loss": 1.0, "elapsed_s": 2.0}) + "\n")
    jobs.update(job.id, step=4)
    changed = jobs_tab.plan_tick(job.id, again.result.statuses, again.result.signature, first.choices, None,
                                 again.sent)
    assert set(changed.resend) == {"table", "detail", "log"} and changed.result.figure is not None
    assert "step 4 done" in changed.sent["log"]


def test_metrics_are_read_on_from_the_last_offset_and_a_rewritten_file_from_the_start(workspace):
    job = make_job("running", 2)
    path = job.run_dir / "metrics.jsonl"
    assert len(jobs_tab.metrics_of(job.id).losses) == 2
    with open(path, "a") as handle:
        handle.write(json.dumps({"step": 3, "loss": 0.9}) + "\n" + '{"step": 4, "lo')   # a line half-written
    assert jobs_tab.metrics_of(job.id).losses[-1] == 0.9
    with open(path, "a") as handle:
        handle.write('ss": 0.8}\n')
    assert jobs_tab.metrics_of(job.id).losses[-2:] == [0.9, 0.8]
    rewritten = path.with_name("metrics.jsonl.partial")       # a resume keeps the records up to its checkpoint
    rewritten.write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    rewritten.replace(path)
    assert jobs_tab.metrics_of(job.id).losses == [3.0]


def test_the_chart_json_is_what_plotly_itself_writes_for_the_same_figure(workspace):
    import plotly.graph_objects as go

    job = make_job("running", 40)
    with open(job.run_dir / "metrics.jsonl", "a") as handle:       # a diverged step: NaN is a gap, not bad JSON
        handle.write('{"step": 41, "loss": NaN, "elapsed_s": 21.0}\n')
    for job_id in (job.id, make_job("queued").id, None):
        spec = jobs_tab.metrics_figure_spec(job_id)
        assert json.loads(jobs_tab.plotly_json(spec)) == json.loads(go.Figure(spec).to_json())


def test_the_web_server_threads_run_below_the_training_priority(monkeypatch):
    import os

    from ui import __main__ as ui_main

    seen = {}

    def launch(**kwargs):           # what gradio's launch does: start the server's threads, return the Blocks
        def server():
            seen["server"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        thread = threading.Thread(target=server)
        thread.start()
        thread.join()
        seen["kwargs"] = kwargs
        return "the app"

    monkeypatch.setattr("ui.app.launch", launch)
    monkeypatch.setenv("LORASTUDIO_UI_NICE", "3")
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert ui_main.launch_below_training(port=7) == "the app" and seen["kwargs"] == {"port": 7}
    assert seen["server"] == min(before + 3, 19), "threads the server starts inherit the lower priority"
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before, "the worker's thread keeps its own"


def test_the_refresh_budget_spreads_over_the_open_pages_and_recovers_when_they_close():
    now = [0.0]
    budget = RefreshBudget(base_s=2.0, max_per_s=4.0, clock=lambda: now[0])
    assert [budget.interval(f"page{i}") for i in range(8)] == [2.0] * 8, "8 pages at 2 s: 4 a second"
    assert budget.interval("page8") == 2.5, "a ninth page: 9 / 4 = 2.25 s, in half seconds"
    for i in range(9, 20):
        budget.interval(f"page{i}")
    assert budget.interval("page0") == 5.0 and budget.open_pages() == 20
    now[0] = 14.0                      # within 3 intervals (15 s): still open
    assert budget.interval("page0") == 5.0
    now[0] = 16.0                      # the others stopped refreshing 16 s ago: closed
    assert budget.interval("page0") == 2.0 and budget.open_pages() == 1


def test_a_page_gets_its_refresh_interval_once_and_again_when_it_changes(workspace, monkeypatch):
    job = make_job("running", 3)
    now = [0.0]
    monkeypatch.setattr(jobs_tab, "refresh_budget", RefreshBudget(2.0, 4.0, clock=lambda: now[0]))
    first = jobs_tab.plan_tick(job.id, None, None, None, None, None, page="a")
    assert first.interval == 2.0, "a page's first tick sets its timer"
    again = jobs_tab.plan_tick(job.id, first.result.statuses, first.result.signature, first.choices, None,
                               first.sent, page="a")
    assert again.interval is None, "unchanged: nothing sent"
    for i in range(12):
        jobs_tab.refresh_budget.interval(f"other{i}")
    crowded = jobs_tab.plan_tick(job.id, again.result.statuses, again.result.signature, first.choices, None,
                                 again.sent, page="a")
    assert crowded.interval == 3.5, "13 pages at 4 a second"
