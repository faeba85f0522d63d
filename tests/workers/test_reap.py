"""The reaper against a frozen worker, without training (the full probe runs in `python -m bench reliability`): a
job claimed by a live process on this host keeps its claim while its heartbeat is recent, and past twice the
stale window the claim ends, its recorded trainer is killed and the job is queued again."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from backend import jobs
from backend.jobs import owner
from backend.vocab import JobStatus


def _owner_of(process: subprocess.Popen) -> str:
    return f"{owner.this_host()}:{process.pid}:{owner.process_start(process.pid)}"


@pytest.fixture
def frozen_claim(lab, monkeypatch):
    """A running job owned by a live but silent 'worker' process, with a live 'trainer' process recorded."""
    monkeypatch.setenv("LORASTUDIO_STALE_AFTER_S", "1")
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    time.sleep(0.3)                     # /proc shows their start times
    worker, trainer = sleepers
    job_id = lab.submit(enqueue=False)
    assert jobs.claim(job_id, _owner_of(worker))
    jobs.update(job_id, trainer=_owner_of(trainer))
    yield job_id, trainer
    for process in sleepers:
        process.kill()
        process.wait()


def test_a_live_owner_keeps_its_claim_within_twice_the_stale_window(frozen_claim):
    from workers import consumer

    job_id, trainer = frozen_claim
    jobs.update(job_id, heartbeat=time.time() - 1.5)       # stale (1 s) but within 2 x 1 s
    assert consumer.reap() == []
    assert jobs.get(job_id).status == JobStatus.RUNNING and trainer.poll() is None


def test_a_frozen_owners_claim_ends_and_its_trainer_is_killed(frozen_claim):
    from workers import consumer

    job_id, trainer = frozen_claim
    jobs.update(job_id, heartbeat=time.time() - 5)
    assert consumer.reap() == [job_id]
    job = jobs.get(job_id)
    assert job.status == JobStatus.INTERRUPTED and "still runs (hung)" in job.reason
    assert trainer.wait(10) == -9
