"""`lorastudio train CONFIG [--set key=value]... [--wait | --inline]`: validate, create the job, queue or train
it, and print its id on the last line of stdout."""
from __future__ import annotations

import sys
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train from a job config (YAML file or preset name)")
    parser.add_argument("config", help="a job config YAML file, or a preset name such as quickstart")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any dotted key, e.g. --set training.max_steps=10 (repeatable)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="queue the job and wait until it ends (exit 0 = completed)")
    mode.add_argument("--inline", action="store_true", help="train in this process, without the queue")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from backend import jobs
    from backend.config import JobConfig
    from backend.jobs import presets
    from backend.vocab import JobStatus

    config = JobConfig.from_yaml(presets.resolve(args.config), args.overrides)
    errors = config.validate()
    if errors:
        print(f"error: the job config has {len(errors)} problem(s):", file=sys.stderr)
        for error in errors:
            print(f"  - {error}", file=sys.stderr)
        return 1
    job = jobs.create(config)
    if args.inline:
        from backend.jobs.runner import run_job

        from backend.jobs.owner import owner_id

        jobs.claim(job.id, owner=f"inline:{owner_id()}")
        print(f"job {job.id}: training {config.stage}/{config.method} on {config.model} with {config.dataset}",
              file=sys.stderr)
        finished = run_job(job.id)
    else:
        from workers.queue import enqueue

        enqueue(job.id)
        print(f"job {job.id} queued: {config.stage}/{config.method} on {config.model} with {config.dataset}",
              file=sys.stderr)
        if not args.wait:
            print(job.id)
            return 0
        finished = wait_for(job.id)
    if finished.status == JobStatus.COMPLETED:
        print(f"completed: adapter in {finished.run_dir / 'adapter'}", file=sys.stderr)
    else:
        print(f"error: job {job.id} {finished.status}: {finished.reason}", file=sys.stderr)
    print(job.id)
    return 0 if finished.status == JobStatus.COMPLETED else 1


def wait_for(job_id: str, poll_s: float = 1.0):
    """Block until the job ends, printing step x/y and the ETA to stderr."""
    from backend import jobs
    from backend.jobs.summary import progress_line
    from backend.vocab import FINAL_STATUSES

    shown = None
    while True:
        job = jobs.get(job_id)
        line = progress_line(job)
        if line != shown:
            print(line, file=sys.stderr, flush=True)
            shown = line
        if job.status in FINAL_STATUSES:
            return job
        time.sleep(poll_s)
