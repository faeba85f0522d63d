"""Run one claimed job in this process: train.log, the stage, heartbeats, stop requests, the final status.

Both the queue's training subprocess and `lorastudio train --inline` end up here. Under DDP (several
processes) only rank 0 writes the job record; every rank trains.

Every record write of the run is fenced by its claim (jobs.update_claimed): once the reaper or another worker
ended the claim, this trainer stops at once and writes nothing. The heartbeat stops when training stops making
progress (no optimizer step or eval batch for LORASTUDIO_STALL_AFTER_S), so the worker kills a hung process.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import traceback

from backend import jobs, stages, workspace
from backend.jobs import disk
from backend.jobs.checkpoints import latest_checkpoint_name, remove_torn_checkpoints
from backend.jobs.owner import owner_id
from backend.vocab import Control, JobStatus, Phase

log = logging.getLogger("lorastudio")

# stop requests (the job's control field) -> the status the job ends in
STOP_STATUS = {Control.CANCEL: JobStatus.CANCELLED, Control.PREEMPT: JobStatus.INTERRUPTED}
# a beat well inside the staleness window the worker and the reaper use
HEARTBEAT_EVERY_S = min(5.0, float(os.environ.get("LORASTUDIO_STALE_AFTER_S", "120")) / 4)
# an evaluation's batch count is written to the record at most this often (its first and last batch always)
PHASE_WRITE_EVERY_S = 1.0
# the record's end is retried this long when the database is busy or its disk is full (a freed torn checkpoint
# usually makes room); after that the worker's settle and then the reaper try again
RECORD_RETRY_S = 20.0


def stall_after_s() -> float:
    """Seconds without training progress after which the heartbeat stops (and the worker kills the process)."""
    return float(os.environ.get("LORASTUDIO_STALL_AFTER_S", "1800"))


class ClaimLost(RuntimeError):
    """The job's claim was ended while this process trained it (stale heartbeat, re-queued elsewhere)."""


class Liveness:
    """Heartbeat and claim of one run: beats from a thread while the model loads and while steps advance;
    stops beating when no progress was marked for stall_after_s once training began."""

    def __init__(self, job_id: str, attempt: int):
        self.job_id, self.attempt = job_id, attempt
        self.lost = threading.Event()
        self.done = threading.Event()
        self.training = False
        self.last_progress = time.monotonic()

    def progress(self) -> None:
        self.training = True
        self.last_progress = time.monotonic()

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_progress if self.training else 0.0

    def write(self, **fields) -> None:
        """A fenced record update; raises ClaimLost once the claim is gone."""
        if self.lost.is_set() or not jobs.update_claimed(self.job_id, self.attempt, **fields):
            self.lost.set()
            raise ClaimLost(f"job {self.job_id} was taken from this process (claim {self.attempt} ended)")

    def beat_forever(self) -> None:
        warned = False
        while not self.done.wait(HEARTBEAT_EVERY_S):
            if self.stalled_for() > stall_after_s():
                if not warned:
                    log.error("no training progress for %.0f s: heartbeat stopped so the worker ends this process",
                              self.stalled_for())
                    warned = True
                continue
            try:
                self.write()
            except ClaimLost:
                log.error("the job's claim was ended (stale heartbeat or re-queued); stopping without a save")
                return
            except Exception:  # noqa: BLE001 - a busy database must not kill training; the next beat retries
                pass


def run_job(job_id: str, external_stop=None) -> jobs.Job:
    """Train claimed (running) job `job_id` to its end; `external_stop()` may return 'preempt' (on SIGTERM)."""
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

    liveness = Liveness(job_id, job.attempts)
    last_read = [0.0, None]

    def should_stop():
        if liveness.lost.is_set():
            raise ClaimLost(f"job {job_id} was taken from this process")
        reason = external_stop() if external_stop else None
        if reason:
            return reason
        now = time.monotonic()
        if is_main and now - last_read[0] >= 1.0:  # one SQLite read a second at most
            last_read[0] = now
            last_read[1] = (jobs.get(job_id).control or None)
        return last_read[1]

    def on_step(step: int, total: int) -> None:
        liveness.progress()
        if is_main:
            liveness.write(step=step, total_steps=total)

    last_phase = [None, 0.0]

    def on_phase(phase: Phase, done: int = 0, total: int = 0) -> None:
        """The record's phase (fenced); an evaluation's progress at most once a second."""
        if not is_main:
            return
        now = time.monotonic()
        if (phase == last_phase[0] == Phase.EVALUATING and done not in (1, total)
                and now - last_phase[1] < PHASE_WRITE_EVERY_S):
            return
        last_phase[:] = [phase, now]
        liveness.write(phase=phase, phase_step=done, phase_total=total)

    from backend.jobs.callbacks import JobHooks

    hooks = JobHooks(on_step=on_step, should_stop=should_stop, on_progress=liveness.progress, on_phase=on_phase)
    try:
        if is_main:  # a heartbeat also while the model loads, before the first step
            liveness.write(trainer=owner_id(), phase=Phase.LOADING, phase_step=0, phase_total=0)
            threading.Thread(target=liveness.beat_forever, daemon=True).start()
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
                _record_end(liveness, status=status, last_checkpoint=checkpoint, control=None,
                            reason=f"{hooks.stop_reason} requested; checkpoint {checkpoint} kept",
                            finished=time.time() if status == JobStatus.CANCELLED else None)
            else:
                _record_end(liveness, status=JobStatus.COMPLETED, finished=time.time(), results=results,
                            last_checkpoint=checkpoint, control=None)
    except ClaimLost as error:  # someone else owns the job now: write nothing, touch no checkpoint
        log.error("%s; this process stops without writing the record", error)
    except BaseException as error:  # noqa: BLE001 - every failure must end in the record, with its reason
        log.error("job failed:\n%s", traceback.format_exc())
        if is_main:
            _record_failure(liveness, error, job, run_dir)
        if not isinstance(error, Exception):
            raise
    finally:
        liveness.done.set()
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


def _record_failure(liveness: Liveness, error: BaseException, job, run_dir) -> None:
    """failed, with one sentence. A save that failed leaves a torn checkpoint: it is removed first (it is never
    resumed from, and on a full disk its space lets the record and the log take their end)."""
    torn, torn_bytes = remove_torn_checkpoints(run_dir / "checkpoints")
    if torn:
        log.warning("removed the torn checkpoint(s) %s (%s)", ", ".join(torn), disk.human(torn_bytes))
    reason = disk.disk_full_reason(error, run_dir, torn, torn_bytes) or failure_reason(error, job)
    try:
        _record_end(liveness, status=JobStatus.FAILED, finished=time.time(), reason=reason,
                    last_checkpoint=latest_checkpoint_name(run_dir))
    except ClaimLost:
        log.error("the claim was ended before the failure could be recorded: %s", reason)
    except sqlite3.Error as record_error:  # the worker's settle (then the reaper) writes an end instead
        log.error("could not record the failure (%s): %s", record_error, reason)


def _record_end(liveness: Liveness, **fields) -> None:
    """The run's last fenced write (the phase cleared), retried while the database is busy or full."""
    fields = {"phase": None, "phase_step": 0, "phase_total": 0, **fields}
    deadline = time.monotonic() + RECORD_RETRY_S
    while True:
        try:
            return liveness.write(**fields)
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
