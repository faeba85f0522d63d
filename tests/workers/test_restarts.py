"""Restarts the way containers and service managers do them: a worker that is PID 1 of its own namespace,
killed and started again; and clean preemptions that must not use up a job's crash budget."""
from __future__ import annotations

import os
import shutil
import signal

import pytest

from backend import jobs
from tests.plugins.studio_faults import fault_env
from tests.workers.conftest import complete_checkpoints, job_status, loss_steps, wait_until

SLOW = fault_env("slow_steps:0.4")


def can_unshare() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) for a PID namespace")
def test_a_pid_1_worker_killed_and_restarted_resumes_its_job(start_worker, submit):
    job_id = submit()
    worker = start_worker(pid1=True, **SLOW)
    wait_until(lambda: complete_checkpoints(job_id) and loss_steps(job_id)[-1:] >= [4], what="a checkpoint")
    owner = jobs.get(job_id).owner
    assert owner.split(":")[1] == "1", f"the worker runs as PID 1 ({owner})"
    worker.kill_group()
    assert job_status(job_id) == "running"  # nobody could write the end
    start_worker(pid1=True)  # the same host and the same pid 1: only the incarnation tells them apart
    wait_until(lambda: job_status(job_id) == "completed", what="the job to complete after the restart")
    job = jobs.get(job_id)
    assert job.owner != owner and job.owner.split(":")[1] == "1"
    assert job.attempts == 2 and job.crashes == 1
    assert loss_steps(job_id)[-1] == 12


def test_clean_preemptions_do_not_count_as_crashes(start_worker, submit):
    job_id = submit(save_steps=100)
    for round_ in (1, 2):  # two clean preemptions (SIGTERM: checkpoint, interrupted)
        worker = start_worker(**SLOW)
        wait_until(lambda: job_status(job_id) == "running" and jobs.get(job_id).attempts == round_
                   and jobs.get(job_id).step >= round_ * 2, what=f"training in attempt {round_}")
        assert worker.terminate() == 0
        assert job_status(job_id) == "interrupted"
    worker = start_worker(**SLOW)
    wait_until(lambda: job_status(job_id) == "running" and jobs.get(job_id).attempts == 3, what="attempt 3")
    wait_until(worker.training_children, what="the training process")
    for child in worker.training_children():
        child.send_signal(signal.SIGKILL)   # one real crash
    wait_until(lambda: job_status(job_id) == "completed", timeout=300, what="completion after the crash")
    job = jobs.get(job_id)
    assert job.attempts == 4 and job.crashes == 1
    assert loss_steps(job_id)[-1] == 12
