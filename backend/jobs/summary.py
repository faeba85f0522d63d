"""The facts a user asks about a job, computed once for both edges: `lorastudio jobs list / show` (and the
progress line of `train --wait`) and the Jobs tab's table.

`summarize(job)` reads the record, its metrics.jsonl and its checkpoints (backend.metrics, backend.jobs.checkpoints:
no transformers import, the Jobs tab calls this on every refresh). `JobSummary.to_dict()` is the JSON that
`lorastudio jobs show --json` prints (one object per job in `jobs list --json`), a contract: keep its keys and values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.jobs.checkpoints import latest_checkpoint_name
from backend.metrics import Metrics
from backend.vocab import JobStatus, Method, Phase, Stage

LAST_LOSSES = 5       # how many recent train losses `jobs show` lists

# the keys (and order) of to_dict(), i.e. of `lorastudio jobs show --json`
JSON_KEYS = ("id", "name", "status", "phase", "stage", "method", "model", "dataset", "dataset_name", "step",
             "total_steps", "eta_s", "attempts", "crashes", "owner", "last_losses", "eval_loss", "checkpoint", "reason",
             "created", "started", "finished", "results", "run_dir")


@dataclass(frozen=True)
class JobSummary:
    id: str
    name: str
    status: JobStatus
    stage: Stage
    method: Method
    model: str
    dataset: str
    step: int
    total_steps: int
    progress: float                    # 0..1 (a completed job without a step count is 1)
    eta_s: float | None                # only while running, once two steps were logged
    attempts: int                      # times a worker claimed it
    crashes: int                       # times its training process died without writing its end
    owner: str | None
    last_losses: tuple[float, ...]     # the last LAST_LOSSES logged train losses
    loss: float | None                 # latest train loss: live while running, else the recorded final one
    eval_loss: float | None            # last logged eval loss
    checkpoint: str | None             # the newest complete checkpoint's folder name
    reason: str | None
    created: float
    started: float | None
    finished: float | None
    results: dict = field(default_factory=dict)
    run_dir: Path | None = None
    dataset_name: str = ""             # what to show for the dataset: its saved name when `dataset` is an id
    phase: str = ""                    # while running: "loading model", "training", "evaluating 3/16", "saving"

    def to_dict(self) -> dict:
        """The --json shape of `lorastudio jobs show` (plain strings and lists, in JSON_KEYS order)."""
        values = {"id": self.id, "name": self.name, "status": _plain(self.status), "phase": self.phase,
                  "stage": _plain(self.stage),
                  "method": _plain(self.method), "model": self.model, "dataset": self.dataset,
                  "dataset_name": self.dataset_name or self.dataset, "step": self.step,
                  "total_steps": self.total_steps, "eta_s": self.eta_s, "attempts": self.attempts, "crashes": self.crashes,
                  "owner": self.owner, "last_losses": list(self.last_losses), "eval_loss": self.eval_loss,
                  "checkpoint": self.checkpoint, "reason": self.reason, "created": self.created,
                  "started": self.started, "finished": self.finished, "results": dict(self.results),
                  "run_dir": str(self.run_dir)}
        return {key: values[key] for key in JSON_KEYS}

    def progress_line(self) -> str:
        """One line: `ID status  step x/y  loss L  ETA s  (reason)` (the CLI's list and --wait output)."""
        parts = [f"{self.id} {self.status}" + (f" ({self.phase})" if self.phase else "")]
        if self.total_steps:
            parts.append(f"step {self.step}/{self.total_steps}")
        if self.last_losses:
            parts.append(f"loss {self.last_losses[-1]:.4f}")
        if self.eta_s is not None:
            parts.append(f"ETA {int(self.eta_s)} s")
        if self.reason and self.status != JobStatus.RUNNING:
            parts.append(f"({self.reason})")
        return "  ".join(parts)


def needs_metrics(job) -> bool:
    """True when the job's `loss` and `eta_s` come from its metrics.jsonl (running, or stopped before a final
    loss was recorded); a caller that shows only those may pass Metrics() for the other jobs."""
    return _needs_metrics(_member(JobStatus, job.status), job.results)


def summarize(job, metrics: Metrics | None = None) -> JobSummary:
    """The summary of a jobs.Job record. `metrics`: the run's metrics when the caller has them already (the
    Jobs tab caches them by file size and mtime); otherwise runs/<id>/metrics.jsonl is read."""
    run_dir = Path(job.run_dir)
    if metrics is None:
        metrics = Metrics.read(run_dir / "metrics.jsonl")
    status = _member(JobStatus, job.status)
    results = job.results
    total = job.total_steps or 0
    running = status == JobStatus.RUNNING
    loss = metrics.last_loss if _needs_metrics(status, results) else results.get("final_train_loss")
    return JobSummary(
        id=job.id, name=job.name, status=status, stage=_member(Stage, job.stage),
        method=_member(Method, job.method), model=job.model, dataset=job.dataset, step=job.step,
        total_steps=job.total_steps,
        progress=min(job.step / total, 1.0) if total else (1.0 if status == JobStatus.COMPLETED else 0.0),
        eta_s=metrics.eta_seconds(job.step, job.total_steps, *_eval_progress(job)) if running and job.total_steps
        else None,
        attempts=job.attempts, crashes=job.crashes, owner=job.owner, last_losses=tuple(metrics.losses[-LAST_LOSSES:]), loss=loss,
        eval_loss=metrics.last_eval_loss, checkpoint=job.last_checkpoint or latest_checkpoint_name(run_dir),
        reason=job.reason, created=job.created, started=job.started, finished=job.finished, results=results,
        run_dir=run_dir, dataset_name=dataset_display(job.dataset), phase=getattr(job, "phase_label", ""))


def _eval_progress(job) -> tuple[int, int]:
    """(batches done, batches) of the evaluation a running job is in now; (0, 0) when it is not evaluating."""
    if getattr(job, "phase", None) == Phase.EVALUATING:
        return job.phase_step or 0, job.phase_total or 0
    return 0, 0


def dataset_display(spec: str) -> str:
    """The dataset as the user knows it: the name it was saved under when the job names it by id."""
    from backend.data.registry import display_name

    try:
        return display_name(spec)
    except Exception:  # noqa: BLE001 - a display nicety: a damaged meta.json shows the id
        return spec


def progress_line(job, metrics: Metrics | None = None) -> str:
    """The one-line progress of a jobs.Job record (see JobSummary.progress_line)."""
    return summarize(job, metrics).progress_line()


def _needs_metrics(status, results: dict) -> bool:
    return status == JobStatus.RUNNING or (
        status in (JobStatus.CANCELLED, JobStatus.INTERRUPTED, JobStatus.FAILED)
        and results.get("final_train_loss") is None)


def _member(kind, value):
    """The vocabulary member for a stored value; an unknown value (an older or hand-edited record) stays as is."""
    try:
        return kind(value)
    except ValueError:
        return value


def _plain(value):
    return None if value is None else str(value)
