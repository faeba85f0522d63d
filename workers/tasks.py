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
        exit_code = process.run_training_process(job, devices)
    settle(job_id, exit_code)


def settle(job_id: str, exit_code: int) -> None:
    """After the training process ended: re-queue an interrupted job, retry a crashed one (3 attempts)."""
    from workers.queue import enqueue

    job = jobs.get(job_id)
    if job.status == JobStatus.RUNNING:  # the process died without writing its end (kill -9, OOM killer, segfault)
        why = f"the training process died ({process.describe_exit(exit_code)})"
        status = jobs.mark_interrupted_or_failed(job_id, why, expected_owner=process.owner_id())
        log.warning("job %s: %s -> %s", job_id, why, status)
        job = jobs.get(job_id)
    if job.status == JobStatus.INTERRUPTED:
        # also when preempted by this worker's shutdown: the persistent queue keeps it for the restart
        enqueue(job_id)

