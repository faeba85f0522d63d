"""The app shell, without a browser: it builds, and the launch options are safe by default."""
import inspect

import pytest

from ui import app as ui_app


def test_build_app_has_every_tab_and_a_timer():
    import gradio as gr
    blocks = ui_app.build_app()
    assert isinstance(blocks, gr.Blocks)
    studio = blocks.studio
    assert isinstance(studio.timer, gr.Timer)
    assert studio.train.start_btn is not None and studio.jobs.chart is not None and studio.data.upload is not None


def test_launch_defaults_are_local_private_and_capped():
    params = inspect.signature(ui_app.launch).parameters
    assert params["host"].default == "127.0.0.1" and params["share"].default is False
    assert params["max_upload_mb"].default == 1024


def test_auth_parsing(monkeypatch):
    assert ui_app.parse_auth("admin:s3:cret") == ("admin", "s3:cret")
    monkeypatch.setenv("LORASTUDIO_AUTH", "u:p")
    assert ui_app.parse_auth(None) == ("u", "p")
    with pytest.raises(ValueError):
        ui_app.parse_auth("nopassword")
