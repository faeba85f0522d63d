"""The Huey queue: SqliteHuey at $LORASTUDIO_HOME/queue.db, or RedisHuey when LORASTUDIO_REDIS_URL is set
(then several machines share one queue, and the workspace must be on storage they all mount).

Only a job id crosses the queue; the job table in studio.db is the source of truth. Huey loses a task whose
process dies mid-run and cannot revoke a started one, so the worker re-queues from the job table (reaper)
and stop / cancel are cooperative (the job's control field).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from backend import workspace

QUEUE_NAME = "lorastudio"


@dataclass
class Queue:
    huey: object          # huey.Huey
    train: object         # the `train(job_id)` task


_queues: dict = {}


def get_queue() -> Queue:
    """The queue for the current workspace / Redis URL (one instance per process and setting)."""
    redis_url = os.environ.get("LORASTUDIO_REDIS_URL") or None
    key = (str(workspace.home()), redis_url)
    if key not in _queues:
        _queues[key] = _make_queue(redis_url)
    return _queues[key]


def _make_queue(redis_url: str | None) -> Queue:
    from workers import tasks

    if redis_url:
        from huey import RedisHuey
        huey = RedisHuey(QUEUE_NAME, url=redis_url, results=False)
    else:
        from huey import SqliteHuey
        huey = SqliteHuey(QUEUE_NAME, filename=str(workspace.home() / "queue.db"), results=False)
    train = huey.task(name="train")(tasks.train)
    return Queue(huey=huey, train=train)


def enqueue(job_id: str) -> str:
    """Put a job id on the queue; returns the Huey task id (kept on the job for revoking)."""
    from backend import jobs

    queue = get_queue()
    task = queue.train.s(job_id)  # the Task object carries the id (results are off, so enqueue returns None)
    queue.huey.enqueue(task)
    jobs.update(job_id, task_id=task.id)
    return task.id


def revoke(task_id: str | None) -> None:
    if task_id:
        get_queue().huey.revoke_by_id(task_id)
