"""Cancel, resume and delete jobs: one implementation for the CLI and the UI (each message one sentence)."""
from __future__ import annotations

import shutil

from backend import jobs, workspace
from backend.vocab import STOPPED_STATUSES, Control, JobStatus
from workers.queue import enqueue, revoke


def cancel_job(job_id: str) -> str:
    """A queued job is cancelled and revoked; a running one is asked to checkpoint and stop."""
    job = _get(job_id)
    if jobs.cancel_queued(job.id):
        revoke(job.task_id)
        return f"Job {job_id} cancelled before it started."
    if job.status == JobStatus.RUNNING:
        jobs.request(job.id, Control.CANCEL)
        return f"Cancel requested for {job_id}: it saves a checkpoint and stops after the current step."
    raise ValueError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")


def resume_job(job_id: str) -> str:
    """Queue a stopped job again; it continues from its newest complete checkpoint."""
    job = _get(job_id)
    if job.status in (JobStatus.RUNNING, JobStatus.COMPLETED):
        raise ValueError(f"job {job_id} is {job.status}; only cancelled, interrupted or failed jobs can be resumed")
    jobs.requeue(job.id, reset_attempts=True)
    enqueue(job.id)
    return f"Job {job_id} queued again; it continues from its newest complete checkpoint."


def delete_job(job_id: str) -> None:
    """Remove a stopped job: its record, runs/<id>/ and exports/<id>/ (a queued one is cancelled first)."""
    job = _get(job_id)
    if job.status == JobStatus.QUEUED:
        if not jobs.cancel_queued(job_id):
            raise ValueError(f"job {job_id} just started; cancel it first, then delete it")
        revoke(job.task_id)
    elif job.status not in STOPPED_STATUSES:
        raise ValueError(f"job {job_id} is {job.status}; cancel it first, then delete it")
    if not jobs.delete_record(job_id, STOPPED_STATUSES):
        raise ValueError(f"job {job_id} changed state while deleting; try again")
    for folder in (workspace.run_dir(job_id), workspace.exports_dir() / job_id):
        if folder.is_dir() and workspace.is_inside(folder, workspace.home()):
            shutil.rmtree(folder, ignore_errors=True)


def _get(job_id: str):
    job = jobs.get(job_id)
    if job is None:
        raise ValueError(f"no job '{job_id}'; see the jobs list")
    return job
