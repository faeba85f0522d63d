"""The queue end to end with real consumer and training subprocesses (tiny model, slowed steps)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backend import jobs
from tests.reliability.lab import complete_checkpoints, job_status, loss_steps, resumed_from, wait_until
from tests.plugins.studio_faults import fault_env

SLOW = fault_env("slow_steps:0.4")


@pytest.mark.slow
def test_queued_job_completes_and_metrics_stream_while_running(start_worker, submit):
    job_id = submit()
    worker = start_worker(**SLOW)
    wait_until(lambda: job_status(job_id) == "running" and len(loss_steps(job_id)) >= 2, what="streamed metrics")
    wait_until(lambda: job_status(job_id) == "completed", what="completion")
    job = jobs.get(job_id)
    assert loss_steps(job_id) == list(range(1, 13)) and job.attempts == 1
    assert (job.run_dir / "adapter" / "adapter_model.safetensors").exists()
    # restarting the worker keeps the history
    assert worker.terminate() == 0
    start_worker()
    listing = subprocess.run([sys.executable, "-m", "cli", "jobs", "list", "--json"], capture_output=True, text=True)
    shown = {j["id"]: j for j in json.loads(listing.stdout)["jobs"]}
    assert shown[job_id]["status"] == "completed" and shown[job_id]["step"] == 12


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_stop_step_and_resumes_on_restart(start_worker, submit):
    job_id = submit(save_steps=100)  # no periodic checkpoint: the one kept is the preemption's
    worker = start_worker(**SLOW)
    wait_until(lambda: len(loss_steps(job_id)) >= 3, what="training to run")
    assert worker.terminate() == 0
    job = jobs.get(job_id)
    assert job.status == "interrupted" and job.last_checkpoint, job
    stopped_at = int(job.last_checkpoint.split("-")[-1])
    assert 3 <= stopped_at < 12 and complete_checkpoints(job_id) == [stopped_at]
    start_worker()
    wait_until(lambda: job_status(job_id) == "completed", what="completion after restart")
    assert resumed_from(job_id) == [stopped_at] and loss_steps(job_id) == list(range(1, 13))


@pytest.mark.slow
def test_cancel_while_queued_and_while_running(start_worker, submit):
    queued = submit()
    result = subprocess.run([sys.executable, "-m", "cli", "jobs", "cancel", queued, "--json"],
                            capture_output=True, text=True)
    assert json.loads(result.stdout)["status"] == "cancelled"
    running = submit()
    start_worker(**SLOW)
    wait_until(lambda: job_status(running) == "running" and len(loss_steps(running)) >= 2, what="running")
    subprocess.run([sys.executable, "-m", "cli", "jobs", "cancel", running], check=True, capture_output=True)
    wait_until(lambda: job_status(running) == "cancelled", what="the cancel to land")
    job = jobs.get(running)
    assert job.last_checkpoint and complete_checkpoints(running), "a cancelled job keeps its checkpoint"
    assert not loss_steps(queued) and jobs.get(queued).attempts == 0, "the cancelled queued job never ran"


@pytest.mark.slow
def test_duplicate_enqueue_runs_once(start_worker, submit):
    from workers.queue import enqueue

    job_id = submit(max_steps=4)
    enqueue(job_id)
    enqueue(job_id)
    start_worker()
    wait_until(lambda: job_status(job_id) == "completed", what="completion")
    second = submit(max_steps=2)  # runs after the duplicates were drained
    wait_until(lambda: job_status(second) == "completed", what="the next job")
    assert jobs.get(job_id).attempts == 1 and loss_steps(job_id) == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_job_that_crashes_every_attempt_ends_failed_after_3(start_worker, submit):
    job_id = submit(save_steps=100)
    start_worker(**fault_env("crash_at_step:2"))
    wait_until(lambda: job_status(job_id) == "failed", timeout=300, what="the job to fail")
    job = jobs.get(job_id)
    assert job.attempts == 3
    assert "died (killed by SIGKILL) on each of 3 attempts" in job.reason


@pytest.mark.slow
def test_nan_at_step_3_fails_with_that_reason(start_worker, submit):
    job_id = submit()
    start_worker(**fault_env("nan_at_step:3"))
    wait_until(lambda: job_status(job_id) == "failed", what="the job to fail")
    job = jobs.get(job_id)
    assert job.reason == "loss became nan at step 3; try a lower learning rate"
    assert job.attempts == 1, "a deterministic failure is not retried"
    assert "Traceback" in (job.run_dir / "train.log").read_text(), "the log keeps the traceback"


def test_a_missing_dataset_fails_before_the_model_loads(start_worker, submit, workspace):
    job_id = submit(enqueue_it=False)
    jobs.update(job_id, config_yaml=jobs.get(job_id).config_yaml.replace("identity-demo", "/nowhere/x.jsonl"))
    from workers.queue import enqueue
    enqueue(job_id)
    start_worker()
    wait_until(lambda: job_status(job_id) == "failed", what="the job to fail")
    assert "x.jsonl" in jobs.get(job_id).reason
    assert not (jobs.get(job_id).run_dir / "process.log").exists(), "no training process was started"


@pytest.mark.slow
def test_two_jobs_on_one_slot_run_in_order(start_worker, submit):
    first, second = submit(max_steps=4), submit(max_steps=4)
    start_worker()
    wait_until(lambda: job_status(second) == "completed", what="both jobs")
    a, b = jobs.get(first), jobs.get(second)
    assert a.status == "completed" and a.finished <= b.started
