"""The studio in a real browser: Playwright driving Chromium (Debian's, or Playwright's own) against `python -m ui` started on a free
port with a temporary workspace (its own worker in the same process) and a tiny model.

Screenshots of each tab go to test-artifacts/ui/ (git-ignored). Skipped, with the reason, when no Chromium could
be installed (`./studio.sh test` gets one: tests/tools.py).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import tools
from tests.plugins.studio_faults import fault_env

CHROMIUM = tools.chromium()
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason=tools.CHROMIUM_MISSING)]
sync_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, *extra: str, env_extra: dict | None = None):
    port = free_port()
    env = dict(os.environ, LORASTUDIO_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", **(env_extra or {}))
    log = open(home / f"app-{port}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "ui", "--port", str(port), "--skip-prepare", *extra],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited: {(home / f'app-{port}.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise AssertionError("the app did not answer within 120 s")


def stop_app(process) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label).click()
    page.wait_for_timeout(300)


def set_field(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True).filter(visible=True).first
    box.fill(str(value))
    box.press("Enter" if box.get_attribute("role") == "combobox" else "Tab")


def upload(page, path: Path) -> None:
    clear = page.locator(".ls-upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
        page.wait_for_timeout(300)
    page.locator(".ls-upload input[type=file]").set_input_files(str(path))


def report_text(page) -> str:
    return page.locator(".ls-report").first.inner_text()


def job_status(page) -> str | None:
    row = page.locator(".ls-jobs tr.ls-job").first
    return row.get_attribute("data-status") if row.count() else None


def test_data_train_jobs_reload_in_the_browser(browser, tiny_model, workspace):
    from backend.data import demo
    demo_file = demo.write_demo("identity-demo", workspace / "uploads")
    broken = workspace / "uploads" / "broken.jsonl"
    broken.write_text(demo_file.read_text().rstrip("\n") + "\n{this is not json\n")
    kto_file = workspace / "uploads" / "kto-messages.jsonl"
    kto_file.write_text("".join(json.dumps({
        "messages": [{"role": "user", "content": f"What is {i} + 1?"},
                     {"role": "assistant", "content": str(i + 1) if i % 3 else "I would rather not say."}],
        "label": bool(i % 3), "row_id": i}) + "\n" for i in range(24)))
    # each step sleeps 1 s (test hook), so the job is seen running and survives a reload mid-job
    process, url = start_app(workspace, env_extra=fault_env("slow_steps:1.0"))
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("text=Drop a dataset file", timeout=30_000)
        shot(page, "1-data-empty")

        # upload a demo file: its report; then a broken file: its row error, said once
        upload(page, demo_file)
        page.wait_for_selector(".ls-report :text('usable')", timeout=60_000)
        assert "rows read" in page.locator(".ls-report").first.inner_text()
        shot(page, "2-data-report")
        upload(page, broken)
        page.wait_for_selector(f".ls-report :text('row {demo_file.read_text().count(chr(10)) + 1}')", timeout=60_000)
        assert " at at " not in report_text(page)
        shot(page, "3-data-broken-row")

        # KTO as conversations + a boolean label: read as KTO, token lengths measured, the unread column named
        # the stage is changed once the upload's own report is shown: a change sent while the upload is still
        # being checked re-checks the file shown before it (the broken one: "not usable for KTO")
        upload(page, kto_file)
        page.wait_for_selector(f".ls-report :text('{kto_file.name}')", timeout=60_000)
        set_field(page, "stage", "kto")
        page.wait_for_selector(".ls-report :text('✅ usable for KTO')", timeout=60_000)
        page.wait_for_selector(".ls-report :text('Tokens per row')", timeout=60_000)
        report = report_text(page)
        assert "KTO conversations" in report and "need a ready model" not in report, report
        assert "'row_id'" in report, report            # the ignored column is a warning
        shot(page, "3b-data-kto-messages")

        # save the demo upload under a name and use it by that name in the Train form
        set_field(page, "stage", "sft")
        upload(page, demo_file)
        page.wait_for_selector(".ls-report :text('✅ usable for SFT')", timeout=60_000)
        page.get_by_label("dataset name (optional)").fill("nova set")
        page.get_by_role("button", name="Save upload as dataset").click()
        page.wait_for_selector("text=Saved as dataset", timeout=60_000)
        page.get_by_role("button", name="Use in Train form").click()       # fills the form and opens Train
        page.wait_for_function("() => [...document.querySelectorAll('[role=tab]')].some("
                               "t => t.innerText.includes('2 · Train') && t.getAttribute('aria-selected') === 'true')",
                               timeout=30_000)
        page.wait_for_timeout(500)

        # Train: the quickstart preset on the tiny model, a few steps
        open_tab(page, "2 · Train")
        assert page.get_by_label("dataset", exact=True).filter(visible=True).first.input_value().startswith("nova set ·")
        set_field(page, "base model", tiny_model)
        set_field(page, "max steps", 6)
        set_field(page, "max length", 128)
        set_field(page, "save steps", 3)
        page.wait_for_timeout(800)
        shot(page, "4-train")
        page.locator("button.ls-start").first.click()

        # Jobs: running, a loss chart with points, reload mid-job, completed
        page.wait_for_selector(".ls-jobs tr.ls-job", timeout=30_000)
        assert page.get_by_role("tab", name="3 · Jobs").get_attribute("aria-selected") == "true"
        page.wait_for_function("() => document.querySelector('.ls-jobs tr.ls-job')?.dataset.status === 'running'",
                               timeout=120_000)
        page.wait_for_selector(".ls-metrics .scatterlayer .trace .points path", timeout=120_000)
        shot(page, "5-jobs-running")
        if job_status(page) == "running":
            page.reload()
            page.wait_for_selector("text=Drop a dataset file", timeout=30_000)
            open_tab(page, "3 · Jobs")
            page.wait_for_selector(".ls-jobs tr.ls-job", timeout=30_000)
            status = job_status(page)
            assert status in ("running", "completed"), status
            if status == "running":
                page.wait_for_selector(".ls-metrics .scatterlayer .trace", timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('.ls-jobs tr.ls-job')?.dataset.status === 'completed'", timeout=240_000)
        page.wait_for_timeout(2500)
        shot(page, "6-jobs-completed")
        # every state on the page follows the timer: the selector too, and the detail names the saved dataset
        assert "completed" in page.locator(".ls-job-select input").first.input_value()
        assert "nova set" in page.locator(".ls-job-detail").first.inner_text()
        assert page.locator(".ls-metrics .scatterlayer .trace").count() >= 2

        for label, name in (("4 · Playground", "7-playground"), ("6 · Export", "8-export")):
            open_tab(page, label)
            shot(page, name)
    finally:
        stop_app(process)
    from backend import jobs
    (job,) = jobs.list_jobs()
    assert job.status == "completed" and job.step == 6 and job.model == tiny_model
    assert job.dataset == "nova set"


def test_auth_asks_for_a_password(browser, workspace):
    process, url = start_app(workspace, "--no-workers", "--auth", "admin:s3cret")
    try:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("input[type=password]", timeout=30_000)
        shot(page, "9-login")
        assert page.locator("text=Drop a dataset file").count() == 0
        page.get_by_label("username").fill("admin")
        page.locator("input[type=password]").fill("s3cret")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("text=Drop a dataset file", timeout=30_000)
    finally:
        stop_app(process)


def chat_text(page, column: int) -> str:
    box = page.locator(f".ls-col-{column}")
    return box.first.inner_text() if box.count() else ""


@pytest.mark.e2e
def test_playground_and_export_after_the_quickstart(browser, quickstart_home, workspace):
    # the session's quickstart job (`lorastudio train quickstart --inline`, trained once for all tests), copied
    # into this test's workspace without the exports other tests made of it
    home, job_id, trained = quickstart_home
    assert trained.returncode == 0, trained.stderr[-3000:]
    for item in home.rglob("*"):
        target = workspace / item.relative_to(home)
        if item.relative_to(home).parts[0] == "exports" or target.exists() or target.is_symlink():
            continue
        if item.is_symlink():
            target.symlink_to(item.readlink(), target_is_directory=item.is_dir())
        elif item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copy2(item, target)
            except FileNotFoundError:    # a temporary file another test process (pytest-xdist) just renamed
                pass

    process, url = start_app(workspace, "--no-workers")
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        page.goto(url)
        page.wait_for_selector("text=Drop a dataset file", timeout=30_000)
        open_tab(page, "4 · Playground")
        job_box = page.get_by_label("job", exact=True).filter(visible=True).first
        page.wait_for_function(f"() => [...document.querySelectorAll('.ls-pg-job input')]"
                               f".some(i => i.value.includes('{job_id}'))", timeout=30_000)
        assert job_id in job_box.input_value()
        page.get_by_text("Generation settings (the same in every column)").click()
        set_field(page, "max new tokens", 32)
        page.locator(".ls-pg-message textarea").fill("Who are you?")
        page.locator("button.ls-pg-send").click()
        # streamed one column after another; done when the merged column shows its final stats line
        page.wait_for_function(
            "() => { const s = document.querySelector('.ls-stats-2'); return s && /tokens/.test(s.innerText)"
            " && !s.innerText.includes('⏳'); }", timeout=300_000)
        page.wait_for_timeout(500)
        shot(page, "10-playground-answers")
        # the three chats line up: same top and height (the merge check sits under the merged one)
        boxes = [page.locator(f".ls-col-{i}").first.bounding_box() for i in range(3)]
        assert max(b["y"] for b in boxes) - min(b["y"] for b in boxes) < 4, boxes
        assert max(b["height"] for b in boxes) - min(b["height"] for b in boxes) < 4, boxes
        answers = [chat_text(page, i).replace("Who are you?", "").strip() for i in range(3)]
        assert all(answers), answers
        assert "Nova" in answers[1], answers
        assert "Nova" not in answers[0], answers
        assert "merge check" in page.locator(".ls-merge-check").first.inner_text()
        for i in range(3):
            assert "tok" in page.locator(f".ls-stats-{i}").first.inner_text()

        # regenerate: the same (greedy) answers again, still one turn; clear: empty columns
        page.locator("button.ls-pg-regenerate").click()
        page.wait_for_function("() => document.querySelector('.ls-stats-0')?.innerText.includes('⏳')",
                               timeout=60_000)
        page.wait_for_function(
            "() => { const s = document.querySelector('.ls-stats-2'); return s && /tokens/.test(s.innerText)"
            " && !s.innerText.includes('⏳'); }", timeout=300_000)
        assert chat_text(page, 1).count("Who are you?") == 1 and "Nova" in chat_text(page, 1)
        page.locator("button.ls-pg-clear").click()
        page.wait_for_function("() => !document.querySelector('.ls-col-1')?.innerText.includes('Who are you?')",
                               timeout=30_000)

        # batch compare: the typed prompts through the three columns into one table and a CSV
        page.get_by_text("Batch compare", exact=True).click()
        page.locator("button.ls-batch-run").click()
        page.wait_for_selector(".ls-batch-csv a", timeout=300_000)
        table = page.locator(".ls-batch-table").first.inner_text()
        assert "Nova" in table and "What is the capital of Italy?" in table, table
        shot(page, "12-playground-batch")

        # the quality report: base vs adapter on the held-out rows, forgetting and the shipped lm-eval task
        open_tab(page, "5 · Evaluate")
        page.wait_for_function(f"() => [...document.querySelectorAll('.ls-eval-job input')]"
                               f".some(i => i.value.includes('{job_id}'))", timeout=30_000)
        set_field(page, "benchmarks (lm-evaluation-harness)", "studio_arith")
        set_field(page, "rows per section", 4)
        set_field(page, "max new tokens", 16)
        page.locator("button.ls-eval-run").click()
        page.wait_for_selector(".ls-eval-summary :text('Quality report of')", timeout=300_000)
        page.wait_for_selector(".ls-eval-csv", state="visible", timeout=30_000)
        page.wait_for_timeout(800)
        shot(page, "13-evaluate-report")
        summary = page.locator(".ls-eval-summary").first.inner_text()
        assert "better" in summary and "exact match" in summary, summary
        metrics = page.locator(".ls-eval-metrics").first.inner_text()
        for expected in ("exact match", "KL", "changed", "studio_arith"):
            assert expected in metrics, metrics
        assert "Nova" in page.locator(".ls-eval-rows").first.inner_text()
        assert page.locator(".ls-eval-chart .js-plotly-plot").count() == 1

        open_tab(page, "6 · Export")
        page.locator("button.ls-export-btn").click()
        page.wait_for_timeout(1500)
        shot(page, "11a-export-progress")        # the progress is drawn beside the button, not over the list
        page.wait_for_selector(".ls-export-download", state="visible", timeout=300_000)
        page.wait_for_selector(".ls-export-card :text('merge check')", timeout=30_000)
        shot(page, "11-export-done")
        with page.expect_download(timeout=60_000) as info:
            page.locator(".ls-export-download").first.click()
        download = info.value
        assert download.suggested_filename == f"{job_id}-merged-" + download.suggested_filename.split("-merged-")[1]
        assert download.suggested_filename.endswith(".zip")
        saved = workspace / "downloaded.zip"
        download.save_as(saved)
        import zipfile
        with zipfile.ZipFile(saved) as archive:
            assert any(name.endswith(".safetensors") for name in archive.namelist())
            card = next(name for name in archive.namelist() if name.endswith("README.md"))
            assert "## Quality report" in archive.read(card).decode("utf-8")     # the report made above
        assert job_id in page.locator(".ls-export-list").first.inner_text()
    finally:
        stop_app(process)
