"""Job records in SQLite (`studio.db`): the source of truth for what ran, not the queue's result store.

Each job also owns a run folder runs/<job_id>/ with config.yaml, metrics.jsonl, train.log, checkpoints/,
adapter/, run.json and card.md. The rest of this wing: runner (one job in this process), callbacks (the
trainer's), checkpoints, card (run.json + card.md), preflight, summary (what the CLI and UI show), presets.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from backend import workspace
from backend.config import JobConfig
from backend.vocab import CLAIMABLE_STATUSES, FINAL_STATUSES, Control, JobStatus, Phase  # noqa: F401 - this API

# a stopped (or still queued) job that Resume may queue again
RESUMABLE_STATUSES = (JobStatus.INTERRUPTED, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.QUEUED)

MAX_CRASHES = 3   # crashes (not claims: a clean preemption is no crash) before a job ends failed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    config_yaml TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    trainer TEXT,
    heartbeat REAL,
    control TEXT,
    last_checkpoint TEXT,
    reason TEXT,
    results_json TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    task_id TEXT,
    phase TEXT,
    phase_step INTEGER NOT NULL DEFAULT 0,
    phase_total INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass
class Job:
    id: str
    name: str
    status: JobStatus
    stage: str
    method: str
    model: str
    dataset: str
    config_yaml: str
    step: int
    total_steps: int
    attempts: int
    owner: str | None
    heartbeat: float | None
    control: str | None
    last_checkpoint: str | None
    reason: str | None
    results_json: str | None
    created: float
    started: float | None
    finished: float | None
    task_id: str | None = None
    crashes: int = 0              # times the training process died without writing its end (attempts = claims)
    trainer: str | None = None    # host:pid:start of the training process of the current claim (rank 0)
    phase: str | None = None      # while running: a backend.vocab.Phase (loading, training, evaluating, saving)
    phase_step: int = 0           # evaluating: batches done of phase_total
    phase_total: int = 0

    @property
    def phase_label(self) -> str:
        """What a running job is doing ("loading model", "training", "evaluating 3/16", "saving"); '' else."""
        if self.status != JobStatus.RUNNING or not self.phase:
            return ""
        try:
            return Phase(self.phase).label(self.phase_step, self.phase_total)
        except ValueError:  # a value from a newer version
            return str(self.phase)

    def __post_init__(self):
        self.status = JobStatus(self.status)

    @cached_property
    def config(self) -> JobConfig:
        """Parsed once per record read (a JobConfig is frozen, so sharing it is safe)."""
        import yaml
        return JobConfig.from_dict(yaml.safe_load(self.config_yaml))

    @property
    def results(self) -> dict:
        return json.loads(self.results_json) if self.results_json else {}

    @property
    def run_dir(self):
        return workspace.run_dir(self.id)


@contextmanager
def connect():
    connection = sqlite3.connect(workspace.home() / "studio.db", timeout=30, isolation_level=None)
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(_SCHEMA)
        _add_missing_columns(connection)
        yield connection
    finally:
        connection.close()


# columns added after the first release, with their definitions: added in place to an older studio.db
_ADDED_COLUMNS = {"crashes": "INTEGER NOT NULL DEFAULT 0", "trainer": "TEXT", "phase": "TEXT",
                  "phase_step": "INTEGER NOT NULL DEFAULT 0", "phase_total": "INTEGER NOT NULL DEFAULT 0"}
_migrated: set[str] = set()


def _add_missing_columns(connection) -> None:
    path = str(workspace.home() / "studio.db")
    if path in _migrated:
        return
    present = {row["name"] for row in connection.execute("PRAGMA table_info(jobs)")}
    for name, definition in _ADDED_COLUMNS.items():
        if name not in present:
            try:
                connection.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
            except sqlite3.OperationalError:  # another process added it first
                pass
    _migrated.add(path)


def new_job_id() -> str:
    """Sortable and readable: 20261122-103000-ab12."""
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def create(config: JobConfig, status: JobStatus = JobStatus.QUEUED) -> Job:
    """Write the run folder (config.yaml) and the job record; a config with problems is refused (ValueError)."""
    problems = config.validate()
    if problems:
        raise ValueError("the job config has problems: " + "; ".join(problems))
    job_id = new_job_id()
    run_dir = workspace.run_dir(job_id)
    run_dir.mkdir(parents=True)
    config.save(run_dir / "config.yaml")
    with connect() as db:
        db.execute(
            "INSERT INTO jobs (id, name, status, stage, method, model, dataset, config_yaml, total_steps, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, config.name, str(status), str(config.stage), str(config.method), config.model, config.dataset,
             config.to_yaml(), max(config.training.max_steps, 0), time.time()))
    return get(job_id)


def create_untrained(config: JobConfig, dataset_label: str, status: JobStatus = JobStatus.COMPLETED) -> Job:
    """The record of an adapter that was not trained here (imported, or composed of others: backend/adapters):
    it has no dataset of its own, so `dataset_label` says where it came from; everything else is checked as for
    a trained job. Nothing is queued."""
    problems = [p for p in config.validate() if not p.startswith("dataset:")]
    if problems:
        raise ValueError("the job config has problems: " + "; ".join(problems))
    job_id = new_job_id()
    run_dir = workspace.run_dir(job_id)
    run_dir.mkdir(parents=True)
    config.save(run_dir / "config.yaml")
    now = time.time()
    with connect() as db:
        db.execute(
            "INSERT INTO jobs (id, name, status, stage, method, model, dataset, config_yaml, total_steps, created,"
            " finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (job_id, config.name, str(status), str(config.stage), str(config.method), config.model, dataset_label,
             config.to_yaml(), now, now))
    return get(job_id)


def get(job_id: str) -> Job | None:
    with connect() as db:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return Job(**dict(row)) if row else None


def list_jobs() -> list[Job]:
    with connect() as db:
        rows = db.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()
    return [Job(**dict(row)) for row in rows]


def update(job_id: str, **fields) -> None:
    if not fields:
        return
    assignments, values = _assignments(fields)
    with connect() as db:
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))


def _assignments(fields: dict) -> tuple[str, list]:
    """`a = ?, b = ?` and the values for an UPDATE; `results` is stored as results_json."""
    if "results" in fields:
        fields = {**fields, "results_json": json.dumps(fields["results"])}
        del fields["results"]
    return ", ".join(f"{name} = ?" for name in fields), list(fields.values())


def claim(job_id: str, owner: str) -> Job | None:
    """Take a queued / interrupted job for `owner` in one conditional update; None when someone else has it.

    A duplicate delivery of the same queue message therefore runs nothing.
    """
    now = time.time()
    with connect() as db:
        cursor = db.execute(
            "UPDATE jobs SET status = ?, owner = ?, trainer = NULL, attempts = attempts + 1, heartbeat = ?,"
            " control = NULL, reason = NULL, started = COALESCE(started, ?), phase = ?, phase_step = 0,"
            " phase_total = 0 WHERE id = ? AND status IN (?, ?)",
            (JobStatus.RUNNING, owner, now, now, Phase.LOADING, job_id, *CLAIMABLE_STATUSES))
        claimed = cursor.rowcount == 1
    return get(job_id) if claimed else None


def request(job_id: str, control: Control) -> None:
    """Ask a running job to stop cooperatively: cancel (ends cancelled) or preempt (ends interrupted)."""
    update(job_id, control=Control(control))


def update_claimed(job_id: str, attempt: int, **fields) -> bool:
    """Update a running job only while claim number `attempt` still holds it; False when the claim was ended
    (the reaper re-queued it after a stale heartbeat, another worker took it): its trainer must stop at once.
    The claim number is the attempts count, which every claim increments: a fencing token."""
    assignments, values = _assignments({"heartbeat": time.time(), **fields})
    with connect() as db:
        cursor = db.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND attempts = ? AND status = ?",
                            (*values, job_id, attempt, JobStatus.RUNNING))
        return cursor.rowcount == 1


def cancel_queued(job_id: str) -> bool:
    """Cancel a job that has not started (one conditional update)."""
    with connect() as db:
        cursor = db.execute(
            "UPDATE jobs SET status = ?, finished = ?, reason = 'cancelled before it started'"
            " WHERE id = ? AND status IN (?, ?)", (JobStatus.CANCELLED, time.time(), job_id, *CLAIMABLE_STATUSES))
        return cursor.rowcount == 1


def requeue(job_id: str, reset_attempts: bool = False) -> bool:
    """Make a stopped job claimable again (resume); returns False when it is running or completed."""
    extra = ", attempts = 0, crashes = 0" if reset_attempts else ""
    with connect() as db:
        cursor = db.execute(
            f"UPDATE jobs SET status = ?, control = NULL, finished = NULL{extra} WHERE id = ? AND status IN (?, ?, ?, ?)",
            (JobStatus.QUEUED, job_id, *RESUMABLE_STATUSES))
        return cursor.rowcount == 1


def mark_interrupted_or_failed(job_id: str, why: str, expected_owner: str | None = None) -> JobStatus | None:
    """After a crash: one more crash counted; interrupted (to be re-queued) below MAX_CRASHES, else failed.

    Only crashes count: a job preempted cleanly (SIGTERM, a worker restart) and claimed again keeps its budget.
    Returns the status the job has now (None when it no longer exists)."""
    job = get(job_id)
    if job is None or job.status != JobStatus.RUNNING or (expected_owner and job.owner != expected_owner):
        return job.status if job else None
    crashes = job.crashes + 1
    if crashes < MAX_CRASHES:
        status, reason = JobStatus.INTERRUPTED, why
    elif crashes == job.attempts:
        status, reason = JobStatus.FAILED, f"{why} on each of {crashes} attempts; see train.log"
    else:
        status, reason = JobStatus.FAILED, (f"{why}; it crashed {crashes} times in {job.attempts} attempts (the "
                                            "others were stopped cleanly); see train.log")
    with connect() as db:
        db.execute("UPDATE jobs SET status = ?, reason = ?, crashes = ?, finished = ? WHERE id = ? AND status = ?",
                   (status, reason, crashes, time.time() if status == JobStatus.FAILED else None, job_id,
                    JobStatus.RUNNING))
    return status


def stale_running_jobs(stale_after_s: float, is_dead_owner) -> list[Job]:
    """Running jobs whose heartbeat is older than stale_after_s, or whose owner is known dead."""
    now = time.time()
    return [job for job in list_jobs() if job.status == JobStatus.RUNNING
            and (is_dead_owner(job.owner) or (job.heartbeat or 0) < now - stale_after_s)]


def delete_record(job_id: str, allowed_statuses) -> bool:
    """Delete a job's record when its status is one of allowed_statuses (one conditional statement)."""
    marks = ", ".join("?" for _ in allowed_statuses)
    with connect() as db:
        cursor = db.execute(f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *allowed_statuses))
        return cursor.rowcount == 1


def log_tail(path, max_bytes: int = 8000) -> str:
    """The last max_bytes of a log file, starting at a line start ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes and "\n" in text:
        text = text.split("\n", 1)[1]
    return text
