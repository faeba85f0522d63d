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


def summary(job) -> dict:
    """The facts a user asks about a job (also the --json shape)."""
    from backend.callbacks import read_metrics

    metrics = read_metrics(job.run_dir / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if isinstance(m.get("loss"), (int, float))]
    eval_losses = [m["eval_loss"] for m in metrics if isinstance(m.get("eval_loss"), (int, float))]
    return {
        "id": job.id, "name": job.name, "status": job.status, "stage": job.stage, "method": job.method,
        "model": job.model, "dataset": job.dataset, "step": job.step, "total_steps": job.total_steps,
        "eta_s": eta_seconds(job, metrics), "attempts": job.attempts, "owner": job.owner,
        "last_losses": losses[-5:], "eval_loss": eval_losses[-1] if eval_losses else None,
        "checkpoint": job.last_checkpoint or _newest_checkpoint(job), "reason": job.reason,
        "created": job.created, "started": job.started, "finished": job.finished, "results": job.results,
        "run_dir": str(job.run_dir),
    }


def eta_seconds(job, metrics) -> float | None:
    """Remaining steps x the recent seconds per step (None until two steps were logged)."""
    if job.status != "running" or not job.total_steps:
        return None
    timed = [(m["step"], m["elapsed_s"]) for m in metrics if "loss" in m and "elapsed_s" in m]
    if len(timed) < 2:
        return None
    (first_step, first_t), (last_step, last_t) = timed[max(0, len(timed) - 10)], timed[-1]
    if last_step <= first_step:
        return None
    return round((job.total_steps - job.step) * (last_t - first_t) / (last_step - first_step), 1)


def progress_line(job) -> str:
    info = summary(job)
    parts = [f"{job.id} {job.status}"]
    if job.total_steps:
        parts.append(f"step {job.step}/{job.total_steps}")
    if info["last_losses"]:
        parts.append(f"loss {info['last_losses'][-1]:.4f}")
    if info["eta_s"] is not None:
        parts.append(f"ETA {int(info['eta_s'])} s")
    if job.reason and job.status != "running":
        parts.append(f"({job.reason})")
    return "  ".join(parts)


def run_list(args) -> int:
    from backend import jobs

    all_jobs = jobs.list_jobs()
    if args.json:
        print(json.dumps({"jobs": [summary(job) for job in all_jobs]}))
        return 0
    if not all_jobs:
        print("no jobs yet; start one with: lorastudio train quickstart")
        return 0
    for job in all_jobs:
        print(progress_line(job))
    return 0


def run_show(args) -> int:
    job = _get(args.job_id)
    info = summary(job)
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


def _newest_checkpoint(job) -> str | None:
    from backend.runner import latest_checkpoint_name
    return latest_checkpoint_name(job.run_dir)
