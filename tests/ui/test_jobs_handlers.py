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


def test_a_running_job_shows_its_phase_and_counts_the_eval_in_its_eta():
    job = make_job("running", 10)   # 10 of 10 steps: only the final evaluation is left
    with open(job.run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 0, "eval_plan": {"eval_rows": 64, "eval_batches": 8, "eval_every": 0,
                                                           "final_eval": True, "rows_per_step": 4}}) + "\n")
    jobs.update(job.id, step=10, phase="evaluating", phase_step=2, phase_total=8)
    row = jobs_tab.job_rows()[0]
    assert row["phase"] == "evaluating 2/8" and row["eta_s"] > 0
    assert "evaluating 2/8" in jobs_tab.jobs_table_html([row])
    assert "(evaluating 2/8)" in jobs_tab.job_detail_markdown(job.id)
    assert jobs_tab.job_choices([row])[0][0] == f"{job.id} · running (evaluating)"
    jobs.update(job.id, status="completed", phase=None)
    assert jobs_tab.job_rows()[0]["phase"] == ""


def test_the_selector_and_the_action_message_follow_the_job_to_its_end():
    job = make_job("cancelled", 2)
    first = jobs_tab.plan_tick(job.id, None, None, None, None)
    assert first.choices == [(f"{job.id} · cancelled", job.id)]
    message = control.resume_job(job.id)                      # "... queued again; it continues ..."
    action = jobs_tab.action_state(job.id)
    assert "queued again" in message and action == (job.id, "queued")
    tick = jobs_tab.plan_tick(job.id, first.result.statuses, first.result.signature, first.choices, action)
    assert tick.choices == [(f"{job.id} · queued", job.id)] and not tick.clear_action  # the message stays
    jobs.update(job.id, status="running", phase="training")
    tick = jobs_tab.plan_tick(job.id, tick.result.statuses, tick.result.signature, tick.choices, tick.action_for)
    assert tick.choices == [(f"{job.id} · running (training)", job.id)] and tick.clear_action
    assert tick.action_for is None
    jobs.update(job.id, status="completed", phase=None)
    tick = jobs_tab.plan_tick(job.id, tick.result.statuses, tick.result.signature, tick.choices, None)
    assert tick.choices == [(f"{job.id} · completed", job.id)] and not tick.clear_action
    assert jobs_tab.plan_tick(job.id, tick.result.statuses, tick.result.signature, tick.choices,
                              None).choices is None, "unchanged labels are not sent again"


def test_a_refresh_error_message_is_cleared_by_the_next_good_refresh():
    job = make_job("running", 1)
    tick = jobs_tab.plan_tick(job.id, None, None, None, jobs_tab.REFRESH_FAILED)
    assert tick.clear_action and tick.action_for is None


def test_nothing_logged_yet_is_one_message_without_empty_axes():
    job = make_job("running", 0)
    layout = jobs_tab.metrics_figure(job.id).to_dict()["layout"]
    texts = [a["text"] for a in layout["annotations"]]
    assert len(texts) == 1 and texts[0].startswith("waiting for the first logged step")
    assert layout["annotations"][0]["xref"] == "paper" and layout["xaxis"]["visible"] is False


def test_an_empty_panel_has_its_own_axes_for_its_message():
    job = make_job("running", 3)
    with open(job.run_dir / "metrics.jsonl", "w") as handle:   # loss only: the other panels are empty
        handle.write("".join(json.dumps({"step": s, "loss": 2.0}) + "\n" for s in (1, 2, 3)))
    fig = jobs_tab.metrics_figure(job.id)
    axes_with_traces = {t.xaxis for t in fig.data}
    for note in fig.layout.annotations:
        assert note.xref.split(" ")[0] in axes_with_traces


def test_series_keep_their_colours_when_eval_loss_appears():
    def colours(fig):
        return {t.name: t.line.color for t in fig.data if t.name}

    job = make_job("running", 1)                 # one step: no eval loss yet
    before = colours(jobs_tab.metrics_figure(job.id))
    with open(job.run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 2, "loss": 2.7, "learning_rate": 3e-4, "grad_norm": 1.0,
                                 "tokens_per_second": 500.0, "elapsed_s": 1.0}) + "\n")
        handle.write(json.dumps({"step": 2, "eval_loss": 2.5}) + "\n")
    jobs_tab._metrics_cache.clear()
    after = colours(jobs_tab.metrics_figure(job.id))
    assert "eval loss" in after and "eval loss" not in before
    assert {name: after[name] for name in before} == before
    assert len(set(after.values()) - {None}) == len(after)

    a, b = make_job("completed", 1), make_job("completed", 3)   # a has no eval loss, b has
    compare = {t.name: t.line.color for t in jobs_tab.compare_figure([a.id, b.id]).data}
    assert compare[f"{b.id} train"] == compare[f"{b.id} eval"] != compare[f"{a.id} train"]
