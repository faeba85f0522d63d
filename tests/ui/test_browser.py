"""The studio in a real browser: Playwright driving Debian's Chromium against `python -m ui` started on a free
port with a temporary workspace (its own worker in the same process) and a tiny model.

Screenshots of each tab go to test-artifacts/ui/ (git-ignored). Skipped when Chromium or Playwright is missing
(`apt-get install -y chromium`; `playwright install` cannot download here).
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

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")]
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


def job_status(page) -> str | None:
    row = page.locator(".ls-jobs tr.ls-job").first
    return row.get_attribute("data-status") if row.count() else None


def test_data_train_jobs_reload_in_the_browser(browser, tiny_model, workspace):
    from backend.data import demo
    demo_file = demo.write_demo("identity-demo", workspace / "uploads")
    broken = workspace / "uploads" / "broken.jsonl"
    broken.write_text(demo_file.read_text().rstrip("\n") + "\n{this is not json\n")
    # each step sleeps 1 s (test hook), so the job is seen running and survives a reload mid-job
    process, url = start_app(workspace, env_extra={"LORASTUDIO_FAULT": "slow_steps:1.0"})
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("text=Drop a dataset file", timeout=30_000)
        shot(page, "1-data-empty")

        # upload a demo file: its report; then a broken file: its row error
        page.locator(".ls-upload input[type=file]").set_input_files(str(demo_file))
        page.wait_for_selector(".ls-report :text('usable')", timeout=60_000)
        assert "rows read" in page.locator(".ls-report").first.inner_text()
        shot(page, "2-data-report")
        page.locator(".ls-upload button[aria-label='Clear']").first.click() \
            if page.locator(".ls-upload button[aria-label='Clear']").count() else None
        page.locator(".ls-upload input[type=file]").set_input_files(str(broken))
        page.wait_for_selector(f".ls-report :text('row {demo_file.read_text().count(chr(10)) + 1}')", timeout=60_000)
        shot(page, "3-data-broken-row")

        # Train: the quickstart preset on the tiny model, a few steps
        open_tab(page, "2 · Train")
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
        assert page.locator(".ls-metrics .scatterlayer .trace").count() >= 2

        for label, name in (("4 · Playground", "7-playground"), ("5 · Export", "8-export")):
            open_tab(page, label)
            shot(page, name)
    finally:
        stop_app(process)
    from backend import jobs
    (job,) = jobs.list_jobs()
    assert job.status == "completed" and job.step == 6 and job.model == tiny_model


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
