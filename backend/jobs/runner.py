"""Run one claimed job in this process: train.log, the stage, heartbeats, stop requests, the final status.

Both the queue's training subprocess and `lorastudio train --inline` end up here. Under DDP (several
processes) only rank 0 writes the job record; every rank trains.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import traceback

from backend import jobs, stages, workspace
from backend.jobs.checkpoints import latest_checkpoint_name
from backend.vocab import Control, JobStatus

# stop requests (the job's control field) -> the status the job ends in
STOP_STATUS = {Control.CANCEL: JobStatus.CANCELLED, Control.PREEMPT: JobStatus.INTERRUPTED}
# a beat well inside the staleness window the worker and the reaper use
HEARTBEAT_EVERY_S = min(5.0, float(os.environ.get("LORASTUDIO_STALE_AFTER_S", "120")) / 4)


def run_job(job_id: str, external_stop=None) -> jobs.Job:
    """Train claimed job `job_id` to its end; `external_stop()` may return 'preempt' (e.g. on SIGTERM)."""
    rank = int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    job = jobs.get(job_id)
    run_dir = workspace.run_dir(job_id)
    handler = logging.FileHandler(run_dir / ("train.log" if is_main else f"train.rank{rank}.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("lorastudio", "transformers", "peft", "trl")]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger("lorastudio").setLevel(logging.INFO)

    beating = threading.Event()
    if is_main:  # a heartbeat also while the model loads, before the first step
        threading.Thread(target=_beat, args=(job_id, beating), daemon=True).start()
    last_read = [0.0, None]

    def should_stop():
        reason = external_stop() if external_stop else None
        if reason:
            return reason
        now = time.monotonic()
        if is_main and now - last_read[0] >= 1.0:  # one SQLite read a second at most
            last_read[0] = now
            last_read[1] = (jobs.get(job_id).control or None)
        return last_read[1]

    def on_step(step: int, total: int) -> None:
        if is_main:
            jobs.update(job_id, step=step, total_steps=total, heartbeat=time.time())

    from backend.jobs.callbacks import JobHooks

    hooks = JobHooks(on_step=on_step, should_stop=should_stop)
    try:
        config = job.config  # validated when the job was created (jobs.create), and checked by the preflight
        while True:
            try:
                results = stages.train(config, run_dir, hooks=hooks, job_id=job_id)
                break
            except Exception as error:  # noqa: BLE001 - only out-of-memory is retried, below
                if not (_is_out_of_memory(error) and config.training.auto_batch_size
                        and config.training.batch_size > 1):
                    raise
                config = _halve_batch(job_id, config)
        if is_main:
            checkpoint = latest_checkpoint_name(run_dir)
            if hooks.stop_reason:
                status = STOP_STATUS.get(hooks.stop_reason, JobStatus.INTERRUPTED)
                jobs.update(job_id, status=status, last_checkpoint=checkpoint, control=None,
                            reason=f"{hooks.stop_reason} requested; checkpoint {checkpoint} kept",
                            finished=time.time() if status == JobStatus.CANCELLED else None)
            else:
                jobs.update(job_id, status=JobStatus.COMPLETED, finished=time.time(), results=results,
                            last_checkpoint=checkpoint, control=None)
    except BaseException as error:  # noqa: BLE001 - every failure must end in the record, with its reason
        logging.getLogger("lorastudio").error("job failed:\n%s", traceback.format_exc())
        if is_main:
            jobs.update(job_id, status=JobStatus.FAILED, finished=time.time(), reason=failure_reason(error, job))
        if not isinstance(error, Exception):
            raise
    finally:
        beating.set()
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
    return jobs.get(job_id)


def _is_out_of_memory(error: BaseException) -> bool:
    import torch
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _halve_batch(job_id: str, config):
    """auto_batch_size: half the batch, twice the accumulation (same effective batch), recorded on the job."""
    import gc

    import torch

    config = config.replace_training(batch_size=config.training.batch_size // 2,
                                     grad_accum=config.training.grad_accum * 2)
    logging.getLogger("lorastudio").warning(
        "out of memory: retrying with batch_size=%d, grad_accum=%d", config.training.batch_size,
        config.training.grad_accum)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    jobs.update(job_id, config_yaml=config.to_yaml())
    config.save(workspace.run_dir(job_id) / "config.yaml")
    return config


def failure_reason(error: BaseException, job=None) -> str:
    """One sentence for the user; the traceback stays in train.log."""
    import torch

    if _is_out_of_memory(error):
        peak = ""
        if torch.cuda.is_available():
            peak = f" (peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated)"
        return (f"out of memory{peak}; try a smaller batch_size or max_length, gradient_checkpointing: true, "
                "or method qlora (or turn on training.auto_batch_size)")
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:500]


def _beat(job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_EVERY_S):
        try:
            jobs.heartbeat(job_id)
        except Exception:  # noqa: BLE001 - a busy database must not kill training; the next beat retries
            pass
