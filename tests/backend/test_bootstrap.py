"""First start: the workspace gets the bundled model and the demo datasets, and a second start changes nothing."""
from __future__ import annotations

from backend import data
from backend.bootstrap import prepare_workspace


def test_prepare_workspace_reports_the_model_and_demos_and_is_idempotent(workspace, bundled_model_dir):
    report = prepare_workspace()
    assert str(workspace) in report and "bundled model smollm2-135m-instruct ready" in report
    listed = data.list_datasets()
    assert "identity-demo" in report and any(meta.get("demo") for meta in listed)
    assert prepare_workspace() == report
