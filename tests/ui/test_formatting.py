"""Numbers are shown for people (one helper, ui/common.py: fmt_value / fmt_count / fmt_seconds), and the Train
tab's model and dataset fields are wide enough for their values."""
from __future__ import annotations

from ui.common import fmt_count, fmt_seconds, fmt_value


def test_counts_durations_and_result_fields():
    assert fmt_count(4884480) == "4.88 M (4,884,480)"
    assert fmt_count(134515008) == "135 M (134,515,008)" and fmt_count(2_000_000_000) == "2 B (2,000,000,000)"
    assert fmt_count(12345) == "12,345" and fmt_count(950) == "950"
    assert fmt_seconds(73.74) == "73.7 s" and fmt_seconds(0.4242) == "0.424 s" and fmt_seconds(612.3) == "612 s"
    assert fmt_seconds(4000) == "1 h 06 min"
    assert fmt_value("wall_time_s", 73.74) == "wall time 73.7 s"
    assert fmt_value("trainable_parameters", 4884480) == "trainable parameters 4.88 M (4,884,480)"
    assert fmt_value("final_train_loss", 2.345678) == "final train loss 2.346"
    assert fmt_value("final_eval_loss", 0.0123456) == "final eval loss 0.0123"


def test_job_detail_shows_results_for_people(workspace):
    from backend import jobs
    from backend.config import JobConfig
    from ui import jobs_tab

    job = jobs.create(JobConfig.from_dict({"model": "smollm2-135m-instruct"}), status="completed")
    jobs.update(job.id, results={"final_train_loss": 1.234567, "wall_time_s": 73.74,
                                 "trainable_parameters": 4884480})
    text = jobs_tab.job_detail_markdown(job.id)
    assert "wall time 73.7 s" in text and "trainable parameters 4.88 M (4,884,480)" in text
    assert "73.7400" not in text and " 4884480" not in text


def test_train_model_and_dataset_fields_are_wide():
    import gradio as gr

    from ui import app as ui_app, train_tab

    with gr.Blocks():
        tab = train_tab.build(gr)
    for path in ("model", "dataset"):
        field = tab.fields[path]
        assert field.min_width >= 300 and "ls-train-wide" in field.elem_classes, path
    assert ".ls-train-wide" in ui_app.CSS and "white-space: nowrap" in ui_app.CSS
