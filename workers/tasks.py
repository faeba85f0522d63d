"""The queue's one task: claim a job and train it in its own process.

One subprocess per job (torchrun for several GPUs) so GPU memory is freed after every job and a crash
cannot take the consumer down. The consumer thread waits for the process and settles the record when the
process died without doing so itself.
"""
from __future__ import annotations

import logging
import time

from backend import jobs
from backend.vocab import JobStatus
from workers import process, slots

log = logging.getLogger("lorastudio.worker")


def train(job_id: str) -> None:
    job = jobs.get(job_id)
    if job is None:
        log.warning("job %s is not in studio.db; ignoring its queue message", job_id)
        return
    gpus = job.config.resources.gpus
    with slots.acquire(gpus) as devices:
        job = jobs.claim(job_id, owner=process.owner_id())
        if job is None:
            log.info("job %s is not claimable (already taken, finished or cancelled); nothing to do", job_id)
            return
        reason = process.preflight(job)
        if reason:
            jobs.update(job_id, status=JobStatus.FAILED, reason=reason, finished=time.time())
            return
        ended = process.run_training_process(job, devices)
    settle(job_id, ended)


def settle(job_id: str, ended: process.Exit) -> None:
    """After the training process ended: re-queue an interrupted job, retry a crashed one (3 crashes).

    Never raises: when the database cannot be written (a full disk), the job stays running with no process
    behind it, and this worker's reaper settles it on a later round."""
    from workers.queue import enqueue

    try:
        job = jobs.get(job_id)
        if job.status == JobStatus.RUNNING:  # died without writing its end (kill -9, OOM killer, segfault, hang)
            why = ended.describe()
            status = jobs.mark_interrupted_or_failed(job_id, why, expected_owner=process.owner_id())
            log.warning("job %s: %s -> %s", job_id, why, status)
            job = jobs.get(job_id)
        if job.status == JobStatus.INTERRUPTED and job.owner == process.owner_id():
            # also when preempted by this worker's shutdown: the persistent queue keeps it for the restart
            enqueue(job_id)
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("job %s: could not settle its end now; the reaper will", job_id)

