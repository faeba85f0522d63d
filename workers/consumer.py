"""The worker: a Huey consumer with one thread per slot, the reaper, and a graceful preempt on shutdown.

`lorastudio worker [--gpus 0,1]` runs it alone; `python app.py` starts it next to the UI by default.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from backend import jobs
from backend.vocab import Control, JobStatus
from workers import process, slots
from workers.queue import enqueue, get_queue

log = logging.getLogger("lorastudio.worker")


def stale_after_s() -> float:
    return float(os.environ.get("LORASTUDIO_STALE_AFTER_S", "120"))


def reap(requeue_interrupted: bool = False) -> list[str]:
    """End the claims that nobody keeps any more, and queue those jobs again (3 crashes, then failed with the
    reason): a running job whose owner died on this host, or whose heartbeat went stale whoever seems to own it
    (its training process is killed first when it still runs here). At worker start (requeue_interrupted=True)
    every interrupted job is queued again too. Returns the ids queued."""
    queued = []
    for job in jobs.stale_running_jobs(stale_after_s(), process.is_dead_owner):
        why = _claim_ended_because(job)
        if why is None:
            continue
        if job.trainer and process.kill_local_process(job.trainer):
            log.warning("job %s: killed its training process %s (stale heartbeat)", job.id, job.trainer)
        inline = (job.owner or "").startswith("inline:")
        status = jobs.mark_interrupted_or_failed(job.id, why)
        log.warning("reaped job %s (owner %s): %s -> %s", job.id, job.owner, why, status)
        if status == JobStatus.INTERRUPTED and not inline:
            enqueue(job.id)  # an inline job is resumed by the user (lorastudio jobs resume), not by a worker
            queued.append(job.id)
    if requeue_interrupted:
        for job in jobs.list_jobs():
            if job.status == JobStatus.INTERRUPTED and not (job.owner or "").startswith("inline:") and job.id not in queued:
                enqueue(job.id)
                queued.append(job.id)
    return queued


def _claim_ended_because(job) -> str | None:
    """Why this stale-looking running job's claim is over, or None when its owner still keeps it."""
    if job.id in process.running_job_ids():
        return None  # this worker waits on its process, and kills it itself when its heartbeat stops
    inline = (job.owner or "").startswith("inline:")
    last = time.strftime("%H:%M:%S", time.localtime(job.heartbeat or 0))
    if job.owner == process.owner_id():
        return "its training process ended without recording its end (the record could not be written then)"
    if process.is_live_local_owner(job.owner):
        # another live worker (or inline run) on this host: it should have ended a hung process within the
        # staleness window; past twice that (plus start-up time before a first beat) the claim is over anyway
        allowed = 2 * stale_after_s() if job.trainer else stale_after_s() + process.STARTUP_GRACE_S
        if (job.heartbeat or 0) > time.time() - allowed:
            return None
        return f"its heartbeat stopped at {last} although its owner {job.owner} still runs (hung)"
    if inline:
        return "the inline training process stopped"
    return f"its worker stopped responding (last heartbeat {last})"


def run_worker(workers: int | None = None, gpus: list[str] | None = None, stop: threading.Event | None = None,
               reap_every_s: float | None = None, shutdown_grace_s: float = 300.0) -> None:
    """Run until SIGTERM / SIGINT (or `stop` is set): running jobs are preempted (checkpoint, interrupted)."""
    count = slots.configure(gpus)
    workers = workers or count
    reap_every_s = reap_every_s or float(os.environ.get("LORASTUDIO_REAP_EVERY_S", "60"))
    queue = get_queue()
    requeued = reap(requeue_interrupted=True)
    log.info("worker %s: %d slot(s) %s, %d thread(s); re-queued %s", process.owner_id(), count,
             slots.describe(), workers, requeued or "nothing")
    consumer = queue.huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                          check_worker_health=True, initial_delay=0.2, max_delay=1.0)
    consumer.start()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    last_reap = time.monotonic()
    while not stop.wait(0.5):
        if time.monotonic() - last_reap >= reap_every_s:
            last_reap = time.monotonic()
            try:
                reap()
            except Exception:  # noqa: BLE001 - e.g. studio.db unreadable while its disk is full: next round
                log.exception("reaper: could not look at the jobs now; trying again in %.0f s", reap_every_s)
    log.info("worker shutting down: preempting %s", process.running_job_ids() or "nothing")
    for job_id in process.running_job_ids():
        jobs.request(job_id, Control.PREEMPT)
    deadline = time.monotonic() + shutdown_grace_s
    consumer.stop_flag.set()
    for _, thread in consumer.worker_threads:
        thread.join(max(deadline - time.monotonic(), 0))
    process.terminate_all(grace_s=10)
    log.info("worker stopped")
