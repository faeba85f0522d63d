"""Jobs tab handlers, without a browser: table, charts (with reasons when empty), toasts, actions."""
import json

import pytest

from backend import jobs
from backend.config import JobConfig
from ui import jobs_tab
from workers import control


def make_job(status="running", steps=0, total=10, results=None):
    job = jobs.create(JobConfig.from_dict({"training": {"max_steps": total}}))
    with open(job.run_dir / "metrics.jsonl", "a") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"step": step, "loss": 3.0 - 0.1 * step, "learning_rate": 3e-4,
                                     "grad_norm": 1.0, "tokens_per_second": 500.0, "elapsed_s": step * 0.5}) + "\n")
        if steps >= 2:
            handle.write(json.dumps({"step": steps, "eval_loss": 2.5}) + "\n")
    fields = {"status": status, "step": steps}
    if results:
        fields["results"] = results
    jobs.update(job.id, **fields)
    return jobs.get(job.id)


def test_rows_newest_first_with_progress_eta_and_loss():
    old = make_job("completed", 10, results={"final_train_loss": 2.0})
    new = make_job("running", 4)
    rows = jobs_tab.job_rows()
    assert [r["id"] for r in rows] == [new.id, old.id]
    running = rows[0]
    assert running["progress"] == pytest.approx(0.4) and running["eta_s"] == pytest.approx(3.0)
    assert running["loss"] == pytest.approx(2.6)
    assert rows[1]["loss"] == 2.0
    html = jobs_tab.jobs_table_html(rows)
    assert "4 / 10" in html and "<progress" in html and f"data-job='{new.id}'" in html


def test_empty_states_say_what_to_do():
    assert "Start training" in jobs_tab.jobs_table_html([])
    fig = jobs_tab.metrics_figure(None)
    assert "select a job" in json.dumps(fig.to_dict())


def test_chart_of_a_running_job_without_steps_says_why():
    job = make_job("running", 0)
    text = json.dumps(jobs_tab.metrics_figure(job.id).to_dict()["layout"]["annotations"])
    assert "waiting for the first logged step; logging every 1 step" in text


def test_chart_has_raw_smoothed_and_eval_loss_and_the_other_panels():
    job = make_job("running", 5)
    fig = jobs_tab.metrics_figure(job.id)
    names = [t.name for t in fig.data]
    assert names[:3] == ["train loss (raw)", "train loss (smoothed)", "eval loss"]
    assert {"learning rate", "grad norm", "tokens / s"} <= set(names)
    assert list(fig.data[0].y) == pytest.approx([2.9, 2.8, 2.7, 2.6, 2.5])


def test_toasts_only_for_changes_and_never_on_first_load():
    job = make_job("running", 2)
    statuses, notes = jobs_tab.status_changes(None, jobs_tab.job_rows())
    assert notes == [] and statuses == {job.id: "running"}
    jobs.update(job.id, status="completed", results={"final_train_loss": 1.5})
    statuses, notes = jobs_tab.status_changes(statuses, jobs_tab.job_rows())
    assert notes == [("info", f"Job {job.id} completed, final loss 1.5000.")]
    assert jobs_tab.status_changes(statuses, jobs_tab.job_rows())[1] == []
    other = make_job("running", 1)
    jobs.update(other.id, status="failed", reason="loss became nan at step 3; try a lower learning rate")
    _, notes = jobs_tab.status_changes({**statuses, other.id: "running"}, jobs_tab.job_rows())
    assert notes[0][0] == "warning" and "lower learning rate" in notes[0][1]


def test_refresh_redraws_the_chart_only_when_metrics_change():
    job = make_job("running", 3)
    first = jobs_tab.refresh(job.id, None, None)
    assert first.figure is not None
    again = jobs_tab.refresh(job.id, first.statuses, first.signature)
    assert again.figure is None
    with open(job.run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 4, "loss": 1.0, "elapsed_s": 2.0}) + "\n")
    jobs.update(job.id, step=4)
    assert jobs_tab.refresh(job.id, again.statuses, again.signature).figure is not None


def test_log_tail_and_detail():
    job = make_job("failed", 2)
    jobs.update(job.id, reason="boom happened")
    (job.run_dir / "train.log").write_text("\n".join(f"line {i}" for i in range(5000)))
    tail = jobs_tab.log_tail(job.id, max_bytes=200)
    assert tail.endswith("line 4999") and "line 1\n" not in tail
    assert "boom happened" in jobs_tab.job_detail_markdown(job.id)


def test_cancel_resume_delete_and_clone():
    queued = make_job("queued", 0)
    assert "cancelled before it started" in control.cancel_job(queued.id)
    assert jobs.get(queued.id).status == "cancelled"
    assert "queued again" in control.resume_job(queued.id)
    assert jobs.get(queued.id).status == "queued"
    running = make_job("running", 1)
    assert "Cancel requested" in control.cancel_job(running.id)
    assert jobs.get(running.id).control == "cancel"
    with pytest.raises(ValueError, match="cancel it first"):
        control.delete_job(running.id)
    done = make_job("completed", 2)
    clone = jobs_tab.clone_config(done.id)
    assert clone["training"]["max_steps"] == 10 and "(clone)" in clone["name"]
    control.delete_job(done.id)
    assert jobs.get(done.id) is None and not done.run_dir.exists()


def test_compare_overlays_several_jobs():
    a, b = make_job("completed", 3), make_job("completed", 4)
    fig = jobs_tab.compare_figure([a.id, b.id])
    assert {f"{a.id} train", f"{b.id} train", f"{a.id} eval"} <= {t.name for t in fig.data}
