"""`lorastudio jobs list | show ID | cancel ID | resume ID [--json]`."""
from __future__ import annotations

import json
import sys
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("jobs", help="list, inspect, cancel or resume jobs")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, handler, text in (("list", run_list, "all jobs, newest first"),
                                ("show", run_show, "one job: status, step / total, ETA, losses, checkpoint"),
                                ("cancel", run_cancel, "cancel a queued or running job (a checkpoint is kept)"),
                                ("resume", run_resume, "queue a stopped job again; it continues from its checkpoint")):
        action = actions.add_parser(name, help=text)
        if name != "list":
            action.add_argument("job_id")
        action.add_argument("--json", action="store_true", help="one JSON object on stdout")
        action.set_defaults(handler=handler)


def run_list(args) -> int:
    from backend import jobs
    from backend.jobs.summary import summarize

    summaries = [summarize(job) for job in jobs.list_jobs()]
    if args.json:
        print(json.dumps({"jobs": [summary.to_dict() for summary in summaries]}))
        return 0
    if not summaries:
        print("no jobs yet; start one with: lorastudio train quickstart")
        return 0
    for summary in summaries:
        print(summary.progress_line())
    return 0


def run_show(args) -> int:
    from backend.jobs.summary import summarize

    info = summarize(_get(args.job_id)).to_dict()
    if args.json:
        print(json.dumps(info))
        return 0
    for key, value in info.items():
        if key == "created" or key == "started" or key == "finished":
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"
        print(f"{key:12} {value}")
    return 0


def run_cancel(args) -> int:
    from workers.control import cancel_job

    _report(args, args.job_id, cancel_job(args.job_id))
    return 0


def run_resume(args) -> int:
    from workers.control import resume_job

    _report(args, args.job_id, resume_job(args.job_id))
    return 0


def _report(args, job_id: str, outcome: str) -> None:
    from backend import jobs

    if args.json:
        print(json.dumps({"id": job_id, "status": jobs.get(job_id).status, "message": outcome}))
    else:
        print(f"{job_id}: {outcome}", file=sys.stderr)


def _get(job_id: str):
    from backend import jobs

    job = jobs.get(job_id)
    if job is None:
        raise ValueError(f"no job '{job_id}'; see `lorastudio jobs list`")
    return job
