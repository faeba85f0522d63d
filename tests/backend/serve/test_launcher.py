"""The API server as a process of its own, as the Serve tab starts it: `lorastudio serve` on a free port over the
tiny base with a trained job, answered through the real openai client, its statistics read back, stopped."""
from __future__ import annotations

import json
import os
import socket

import openai
import pytest

from backend import workspace as studio_workspace
from backend.serve import launcher
from tests.backend.conftest import finished_job


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_taken_port_and_a_dead_servers_state_file(workspace):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert "in use by another program" in launcher.port_problem(port)
    assert "from 1024 to 65535" in launcher.port_problem(80)
    state = studio_workspace.serve_dir() / launcher.STATE_FILE
    state.write_text(json.dumps({"pid": 2 ** 22 + 17, "port": port, "model": None, "adapters": [],
                                 "started_at": 0.0}))
    assert launcher.current() is None and not state.exists(), "a state file whose process is gone: no server"
    assert launcher.stop() == "No server is running."


@pytest.mark.slow   # a server process that loads a model
def test_the_app_starts_a_server_that_the_openai_client_uses_then_stops_it(tiny_model):
    from ui import serve_tab

    job_id = finished_job(tiny_model, steps=6, lr=1e-1)
    port = _free_port()
    message = serve_tab.start_server([job_id], port, "a-key", 2)
    try:
        assert message == f"Serving on http://127.0.0.1:{port}/v1."
        state = launcher.current()
        assert state is not None and state.adapters == [job_id]
        assert oct((studio_workspace.serve_dir() / launcher.STATE_FILE).stat().st_mode & 0o777) == "0o600"
        assert "a-key" not in " ".join(__import__("psutil").Process(state.pid).cmdline()), "the key is not on argv"
        with pytest.raises(launcher.ServerError, match="already runs"):
            launcher.start(launcher.ServerSettings(port=_free_port()))

        client = openai.OpenAI(base_url=state.url, api_key="a-key")
        assert [m.id for m in client.models.list()] == [tiny_model, job_id]
        answer = client.chat.completions.create(model=job_id, temperature=0, max_tokens=8,
                                                messages=[{"role": "user", "content": "Who are you?"}])
        assert answer.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=state.url, api_key="wrong").models.list()

        view = serve_tab.status_view()
        assert view["status"].startswith("**Serving**") and "required (Bearer)" in view["status"]
        assert job_id in view["adapters"] and "1 requests" in view["requests"]
        assert job_id in view["python"] and "YOUR_KEY" in view["curl"]
    finally:
        assert serve_tab.stop_server() == f"Server on http://127.0.0.1:{port}/v1 stopped."
    assert launcher.current() is None and serve_tab.status_view()["status"].startswith("**Not running.**")
    assert os.path.exists(launcher.log_path())
