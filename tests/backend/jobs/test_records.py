"""Job records: crashes are counted apart from claims, and an older studio.db gains the new column in place."""
from __future__ import annotations

import sqlite3

from backend import jobs, workspace
from backend.config import JobConfig
from backend.vocab import JobStatus


def running_job() -> str:
    job = jobs.create(JobConfig.from_dict({"model": "tiny-llama"}))
    jobs.claim(job.id, owner="host:1:100")
    return job.id


def test_only_crashes_use_up_the_budget():
    job_id = running_job()
    for _ in range(4):  # four clean preemptions: each ends interrupted and is claimed again
        jobs.update(job_id, status=JobStatus.INTERRUPTED)
        jobs.claim(job_id, owner="host:1:100")
    assert jobs.mark_interrupted_or_failed(job_id, "the training process died") == JobStatus.INTERRUPTED
    jobs.claim(job_id, owner="host:1:100")
    assert jobs.mark_interrupted_or_failed(job_id, "the training process died") == JobStatus.INTERRUPTED
    jobs.claim(job_id, owner="host:1:100")
    assert jobs.mark_interrupted_or_failed(job_id, "the training process died") == JobStatus.FAILED
    job = jobs.get(job_id)
    assert (job.attempts, job.crashes) == (7, 3)
    assert job.reason == ("the training process died; it crashed 3 times in 7 attempts (the others were stopped "
                          "cleanly); see train.log")
    assert jobs.requeue(job_id, reset_attempts=True) and (jobs.get(job_id).attempts, jobs.get(job_id).crashes) == (0, 0)


def test_an_older_database_gains_the_crashes_column():
    path = workspace.home() / "studio.db"
    with sqlite3.connect(path) as db:  # the first release's table: no crashes column
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, "
                   "stage TEXT NOT NULL, method TEXT NOT NULL, model TEXT NOT NULL, dataset TEXT NOT NULL, "
                   "config_yaml TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL "
                   "DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, owner TEXT, heartbeat REAL, control TEXT, "
                   "last_checkpoint TEXT, reason TEXT, results_json TEXT, created REAL NOT NULL, started REAL, "
                   "finished REAL, task_id TEXT)")
        db.execute("INSERT INTO jobs (id, status, stage, method, model, dataset, config_yaml, created) "
                   "VALUES ('old-job', 'completed', 'sft', 'lora', 'm', 'd', '{}', 1.0)")
    jobs._migrated.clear()
    old = jobs.get("old-job")
    assert old.status == JobStatus.COMPLETED and old.crashes == 0


def test_a_write_is_fenced_by_its_claim():
    job_id = running_job()
    assert jobs.update_claimed(job_id, 1, step=2) and jobs.get(job_id).step == 2
    assert jobs.mark_interrupted_or_failed(job_id, "its worker stopped responding") == JobStatus.INTERRUPTED
    jobs.claim(job_id, owner="host:2:200")     # the job was taken over: claim 2
    assert not jobs.update_claimed(job_id, 1, step=9, status=JobStatus.COMPLETED), "the old trainer writes nothing"
    job = jobs.get(job_id)
    assert (job.status, job.step, job.attempts) == (JobStatus.RUNNING, 2, 2)
    assert jobs.update_claimed(job_id, 2, trainer="host:3:300") and jobs.get(job_id).trainer == "host:3:300"
