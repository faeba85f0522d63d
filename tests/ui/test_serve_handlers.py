"""Serve tab handlers without a browser: which adapters it offers, one base per server, the engine command
lines, what it shows while no server runs (the running server: tests/backend/serve/test_launcher.py)."""
from __future__ import annotations

import pytest

from backend import jobs
from backend.config import JobConfig
from tests.backend.conftest import finished_job
from ui import serve_tab
from ui.common import UserError


def test_the_tab_offers_finished_adapters_of_one_base_and_their_engine_lines(tiny_model):
    job_id = finished_job(tiny_model)
    unfinished = jobs.create(JobConfig.from_dict({"model": tiny_model}), status="running").id
    elsewhere = jobs.create(JobConfig.from_dict({"model": "smollm2-135m-instruct"}), status="completed").id
    offered = [value for _, value in serve_tab.adapter_choices()]
    assert job_id in offered and unfinished not in offered
    assert serve_tab.base_of([job_id]) == tiny_model and serve_tab.base_of([]) is None
    with pytest.raises(UserError, match="one server serves one base model.*pick the jobs of one base"):
        serve_tab.base_of([job_id, elsewhere])
    lines = serve_tab.engine_lines([job_id])
    assert "vllm serve" in lines and f"--lora-modules {job_id}=" in lines and "--max-lora-rank 8" in lines
    assert f'export {job_id} as \\"LoRA GGUF\\" first' in lines or f"export {job_id} as" in lines
    assert "one server serves one base" in serve_tab.engine_lines([job_id, elsewhere])


def test_what_the_tab_shows_while_no_server_runs(workspace):
    view = serve_tab.status_view()
    assert view["status"].startswith("**Not running.**") and view["adapters"] == ""
    assert "http://127.0.0.1:8000/v1/chat/completions" in view["curl"]
    assert 'OpenAI(base_url="http://127.0.0.1:8000/v1"' in view["python"]
    with pytest.raises(UserError, match="whole numbers"):
        serve_tab.start_server([], "eighty", None, 4)
    assert serve_tab.stop_server() == "No server is running."
