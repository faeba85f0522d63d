"""The training process of one job: `python -m workers.train_process JOB_ID` (one per rank under torchrun).

SIGTERM (the worker shutting down, or someone stopping this process) means preempt: save a checkpoint,
stop, status interrupted. Ctrl-C in the worker's terminal is the worker's to handle, so SIGINT is ignored.
Exit codes: 0 completed, 3 stopped (cancelled / interrupted), 1 failed.
"""
from __future__ import annotations

import signal
import sys
import threading


def main(job_id: str) -> int:
    from workers.process import die_with_parent

    die_with_parent()  # under torchrun the parent is the torchrun agent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preempted = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: preempted.set())

    from backend.jobs.runner import run_job
    from backend.vocab import Control, JobStatus

    job = run_job(job_id, external_stop=lambda: Control.PREEMPT if preempted.is_set() else None)
    exit_codes = {JobStatus.COMPLETED: 0, JobStatus.CANCELLED: 3, JobStatus.INTERRUPTED: 3}
    return exit_codes.get(job.status, 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
