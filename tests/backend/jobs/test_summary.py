"""backend.jobs.summary: the job facts `lorastudio jobs` and the Jobs tab show, from a real record and run folder."""
import json

import pytest

from backend import jobs
from backend.config import JobConfig
from backend.jobs.summary import JSON_KEYS, needs_metrics, progress_line, summarize
from backend.metrics import Metrics
from backend.vocab import JobStatus


def make_job(status="running", steps=0, total=10, **fields):
    job = jobs.create(JobConfig.from_dict({"name": "demo", "training": {"max_steps": total}}))
    with open(job.run_dir / "metrics.jsonl", "a") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"step": step, "loss": 3.0 - 0.1 * step, "elapsed_s": step * 0.5}) + "\n")
        if steps >= 2:
            handle.write(json.dumps({"step": steps, "eval_loss": 2.5}) + "\n")
    jobs.update(job.id, status=status, step=steps, **fields)
    return jobs.get(job.id)


def test_a_running_job_has_progress_eta_and_its_losses():
    job = make_job("running", 7)
    summary = summarize(job)
    assert summary.status is JobStatus.RUNNING and summary.progress == pytest.approx(0.7)
    assert summary.eta_s == pytest.approx(1.5)            # 3 steps left x 0.5 s per step
    assert summary.last_losses == pytest.approx((2.7, 2.6, 2.5, 2.4, 2.3))
    assert summary.loss == pytest.approx(2.3) and summary.eval_loss == 2.5
    assert summary.progress_line() == progress_line(job) == f"{job.id} running  step 7/10  loss 2.3000  ETA 1 s"


def test_to_dict_is_the_jobs_show_json():
    job = make_job("failed", 3, reason="boom")
    data = summarize(job).to_dict()
    assert tuple(data) == JSON_KEYS
    assert json.loads(json.dumps(data)) == data
    assert type(data["status"]) is str and data["status"] == "failed" and data["stage"] == "sft"
    assert data["eta_s"] is None and data["last_losses"] == pytest.approx([2.9, 2.8, 2.7])
    assert data["run_dir"] == str(job.run_dir) and data["checkpoint"] is None and data["reason"] == "boom"
    assert progress_line(job).endswith("loss 2.7000  (boom)")


def test_a_completed_job_shows_its_recorded_final_loss_and_no_eta():
    job = make_job("completed", 4, total=0, results={"final_train_loss": 1.25})
    assert not needs_metrics(job)
    summary = summarize(job)
    assert summary.loss == 1.25 and summary.eta_s is None and summary.progress == 1.0   # no step count: done
    assert summarize(job, Metrics()).loss == 1.25      # the Jobs tab skips reading its metrics


def test_a_stopped_job_without_a_final_loss_reads_its_last_logged_one():
    job = make_job("cancelled", 4)
    assert needs_metrics(job) and summarize(job).loss == pytest.approx(2.6)


def test_queued_job_and_the_newest_complete_checkpoint():
    job = make_job("queued", 0, total=0)
    summary = summarize(job)
    assert summary.progress == 0.0 and summary.loss is None and summary.last_losses == ()
    for step, complete in ((2, True), (4, True), (6, False)):     # checkpoint-6 was torn by a kill
        folder = job.run_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "COMPLETE").write_text("{}")
    assert summarize(job).checkpoint == "checkpoint-4"
    assert (job.run_dir / "checkpoints" / "checkpoint-6").is_dir()   # a read-only look
    assert progress_line(job) == f"{job.id} queued"
