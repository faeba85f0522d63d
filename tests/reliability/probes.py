"""The reliability probes: each attacks real worker (or app) subprocesses the way users' machines do, then
checks what the job record, the run folder and the metrics say. One probe = one function that returns an
Outcome (held or not, with the broken guarantees named); tests/reliability asserts them one by one,
bench/reliability.py runs the whole matrix and prints the table.

The guarantees: a killed job resumes from its newest complete checkpoint (never a torn one) and completes,
each step is logged once, a clean preemption is no crash, every job runs exactly once, a full disk fails the
job with a sentence that names the disk and keeps the previous checkpoint, a killed export lists nothing.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend import jobs, workspace
from tests.plugins.studio_faults import KILL_GROUP_MARKER, fault_env
from tests.reliability.lab import (FAST_QUEUE_ENV, Lab, complete_checkpoints, free_port, job_status, loss_steps,
                                   resumed_from, torn_checkpoints, wait_until)

SLOW = fault_env("slow_steps:0.4")
STEPS = 12


@dataclass
class Outcome:
    probe: str
    problems: list[str] = field(default_factory=list)
    steps_lost: int | None = None       # steps trained again because of the attack
    attempts: int = 0
    crashes: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def held(self) -> bool:
        return not self.problems

    def check(self, condition: bool, broken: str) -> None:
        if not condition:
            self.problems.append(broken)

    def __str__(self) -> str:
        return f"{self.probe}: " + ("held" if self.held else "did not hold: " + "; ".join(self.problems))


def _finish(outcome: Outcome, job_id: str, started: float, reached: int | None = None) -> Outcome:
    """The checks every resumed job must pass: completed, each step logged once, resumed from the newest
    complete checkpoint of the moment of the attack (steps lost = the step reached minus that)."""
    job = jobs.get(job_id)
    outcome.attempts, outcome.crashes = job.attempts, job.crashes
    outcome.seconds = round(time.monotonic() - started, 1)
    outcome.check(job.status == "completed", f"the job ended {job.status}: {job.reason}")
    steps = loss_steps(job_id)
    outcome.check(steps == list(range(1, STEPS + 1)), f"logged steps {steps}, not 1..{STEPS} once each")
    outcome.check(not torn_checkpoints(job_id), f"torn checkpoints left: {torn_checkpoints(job_id)}")
    resumes = resumed_from(job_id)
    if reached is not None and resumes:
        outcome.steps_lost = reached - resumes[0]
    return outcome


def _wait_for_checkpoint(job_id: str, at_least: int = 3) -> int:
    """Wait until the job has a complete checkpoint and has trained past it; returns the step reached."""
    wait_until(lambda: complete_checkpoints(job_id) and jobs.get(job_id).step > max(complete_checkpoints(job_id))
               and max(complete_checkpoints(job_id)) >= at_least, what="a checkpoint and a step past it")
    return jobs.get(job_id).step


def kill_worker_group(lab: Lab, pid1: bool = False) -> Outcome:
    """kill -9 of the worker and its trainer together, then the worker started again (as PID 1 of a new
    namespace with pid1: the same host and pid, only the incarnation differs)."""
    outcome, started = Outcome("kill -9 worker group" + (" (PID 1)" if pid1 else "")), time.monotonic()
    job_id = lab.submit()
    worker = lab.worker(pid1=pid1, **SLOW)
    reached = _wait_for_checkpoint(job_id)
    good = max(complete_checkpoints(job_id))
    outcome.check(not pid1 or jobs.get(job_id).owner.split(":")[1] == "1", "the worker does not run as PID 1")
    worker.kill_group()
    lab.worker(pid1=pid1)
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), what="the resumed job to end")
    outcome.check(resumed_from(job_id)[:1] == [good], f"resumed from {resumed_from(job_id)}, not {good}")
    outcome = _finish(outcome, job_id, started, reached)
    outcome.check((outcome.attempts, outcome.crashes) == (2, 1), f"attempts/crashes {outcome.attempts}/"
                                                                 f"{outcome.crashes}, not 2/1")
    return outcome


def kill_trainer(lab: Lab, pid1: bool = False) -> Outcome:
    """kill -9 of the training process alone: the worker notices, re-queues, and trains it again."""
    outcome, started = Outcome("kill -9 trainer" + (" (PID 1 worker)" if pid1 else "")), time.monotonic()
    job_id = lab.submit()
    worker = lab.worker(pid1=pid1, **SLOW)
    reached = _wait_for_checkpoint(job_id)
    good = max(complete_checkpoints(job_id))
    worker.kill_training_children()
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), what="the job to end after the crash")
    outcome.check(worker.process.poll() is None, "the worker died with its trainer")
    outcome.check(resumed_from(job_id)[:1] == [good], f"resumed from {resumed_from(job_id)}, not {good}")
    outcome = _finish(outcome, job_id, started, reached)
    outcome.check((outcome.attempts, outcome.crashes) == (2, 1), f"attempts/crashes {outcome.attempts}/"
                                                                 f"{outcome.crashes}, not 2/1")
    return outcome


def kill_in_save(lab: Lab, points: tuple[str, ...] = ("weights",), restart: str = "worker") -> Outcome:
    """kill -9 inside checkpoint saves: at checkpoint-6 the first point, at checkpoint-9 the second (once each).
    restart: "worker" (the trainer dies, its worker re-queues), "group" (the worker dies too and is started
    again) or "pid1" (the same, the worker as PID 1 of a new namespace)."""
    name = "kill -9 in checkpoint save (" + ", ".join(points) + (f"; {restart} restarted)" if restart != "worker"
                                                                  else ")")
    outcome, started = Outcome(name), time.monotonic()
    faults = ",".join(f"kill_in_save_{point}:{6 + 3 * i}" for i, point in enumerate(points))
    if restart != "worker":
        faults += ",kill_group:1"
    job_id = lab.submit()
    pid1 = restart == "pid1"
    worker = lab.worker(pid1=pid1, **fault_env("slow_steps:0.2," + faults))
    for i, _ in enumerate(points):
        crashes = i + 1
        if restart != "worker":
            marker = lab.home / KILL_GROUP_MARKER
            wait_until(marker.exists, what=f"the trainer to reach kill point {crashes}")
            worker.kill_group()
            marker.unlink()
            outcome.check(job_status(job_id) == "running", "the killed group wrote an end it could not know")
            worker = lab.worker(pid1=pid1, **fault_env("slow_steps:0.2," + faults))
        wait_until(lambda: jobs.get(job_id).crashes >= crashes or job_status(job_id) == "failed",
                   what=f"crash {crashes} to be noticed")
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), what="the job to end")
    expected = [3 + 3 * i for i in range(len(points))]
    resumes = resumed_from(job_id)
    outcome.check(resumes == expected, f"resumed from {resumes}, not {expected} (the checkpoint before each "
                                       "torn one)")
    outcome = _finish(outcome, job_id, started)
    kill_steps = [6 + 3 * i for i in range(len(points))]   # the saves the faults cut off
    outcome.steps_lost = sum(killed - resumed for killed, resumed in zip(kill_steps, resumes))
    outcome.check(outcome.crashes == len(points), f"{outcome.crashes} crashes counted, not {len(points)}")
    return outcome


def kill_app(lab: Lab, pid1: bool = False) -> Outcome:
    """kill -9 of `python app.py` (the UI with its embedded worker), then the app started again."""
    outcome, started = Outcome("kill -9 app with embedded worker" + (" (PID 1)" if pid1 else "")), time.monotonic()
    job_id = lab.submit()
    port = free_port()
    app = lab.app(port, pid1=pid1, **SLOW)
    reached = _wait_for_checkpoint(job_id)
    good = max(complete_checkpoints(job_id))
    outcome.check(not pid1 or jobs.get(job_id).owner.split(":")[1] == "1", "the app does not run as PID 1")
    app.kill_group()
    lab.app(port, pid1=pid1)
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), what="the resumed job to end")
    outcome.check(_serves(port), f"the restarted app does not answer on port {port}")
    outcome.check(resumed_from(job_id)[:1] == [good], f"resumed from {resumed_from(job_id)}, not {good}")
    outcome = _finish(outcome, job_id, started, reached)
    outcome.check(outcome.crashes == 1, f"{outcome.crashes} crashes counted, not 1")
    return outcome


def _serves(port: int) -> bool:
    import urllib.request
    try:
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200, 120,
                   "the app to answer")
        return True
    except (AssertionError, OSError):
        return False


def preempt_twice_then_crash(lab: Lab) -> Outcome:
    """SIGTERM of the worker twice (two clean preemptions with checkpoints), then one kill -9 of the trainer."""
    outcome, started = Outcome("SIGTERM x2, then kill -9 trainer"), time.monotonic()
    job_id = lab.submit(save_steps=100)
    for round_ in (1, 2):
        worker = lab.worker(**SLOW)
        wait_until(lambda: job_status(job_id) == "running" and jobs.get(job_id).attempts == round_
                   and jobs.get(job_id).step >= round_ * 3, what=f"training in attempt {round_}")
        outcome.check(worker.terminate() == 0, "the worker did not stop cleanly on SIGTERM")
        outcome.check(job_status(job_id) == "interrupted", f"preempted job is {job_status(job_id)}")
    worker = lab.worker(**SLOW)
    wait_until(lambda: job_status(job_id) == "running" and jobs.get(job_id).attempts == 3
               and jobs.get(job_id).step > max(complete_checkpoints(job_id) or [0]), what="attempt 3 training")
    reached = jobs.get(job_id).step
    worker.kill_training_children()
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), timeout=300, what="the job to end")
    outcome = _finish(outcome, job_id, started, reached)
    outcome.check((outcome.attempts, outcome.crashes) == (4, 1), f"attempts/crashes {outcome.attempts}/"
                                                                 f"{outcome.crashes}, not 4/1")
    return outcome


def many_workers(lab: Lab, workers: int = 3, count: int = 4, redis_url: str | None = None) -> Outcome:
    """`workers` workers on one queue (SQLite, or Redis with redis_url), `count` jobs: each runs exactly once."""
    backend_name = "Redis" if redis_url else "SQLite"
    outcome, started = Outcome(f"{workers} workers, {count} jobs on {backend_name}"), time.monotonic()
    env = {"LORASTUDIO_REDIS_URL": redis_url} if redis_url else {}
    if redis_url:
        os.environ["LORASTUDIO_REDIS_URL"] = redis_url  # this process enqueues on the same queue
    try:
        ids = [lab.submit(max_steps=3, save_steps=100) for _ in range(count)]
        for _ in range(workers):
            lab.worker(**env, **fault_env("slow_steps:0.3"))
        wait_until(lambda: all(job_status(i) in ("completed", "failed") for i in ids), timeout=600,
                   what="every job to end")
    finally:
        if redis_url:
            os.environ.pop("LORASTUDIO_REDIS_URL", None)
    owners = set()
    for job_id in ids:
        job = jobs.get(job_id)
        owners.add(job.owner)
        outcome.check(job.status == "completed", f"{job_id} ended {job.status}: {job.reason}")
        outcome.check(job.attempts == 1, f"{job_id} was claimed {job.attempts} times")
        outcome.check(loss_steps(job_id) == [1, 2, 3], f"{job_id} logged steps {loss_steps(job_id)}")
        starts = (job.run_dir / "train.log").read_text().count("trainable parameters")
        outcome.check(starts == 1, f"{job_id} started training {starts} times")
    outcome.steps_lost, outcome.attempts = 0, sum(jobs.get(i).attempts for i in ids)
    outcome.seconds = round(time.monotonic() - started, 1)
    outcome.note = f"ran on {len(owners)} of {workers} workers"
    return outcome


def stale_claim_of_a_live_owner(lab: Lab) -> Outcome:
    """SIGSTOP of a worker and its trainer (alive, but frozen: a hung host process): another worker ends the
    stale claim, kills the frozen trainer, and resumes the job; the frozen one, continued, writes nothing."""
    outcome, started = Outcome("frozen worker (SIGSTOP); another takes over"), time.monotonic()
    job_id = lab.submit()
    frozen = lab.worker(**SLOW)
    reached = _wait_for_checkpoint(job_id)
    good = max(complete_checkpoints(job_id))
    first_owner = jobs.get(job_id).owner
    trainers = frozen.training_children()
    frozen.signal_group(signal.SIGSTOP)
    lab.worker(**SLOW)
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), timeout=300, what="the takeover")
    outcome.check(all(not t.is_running() or t.status() == "zombie" for t in trainers),
                  "the frozen trainer was not killed")
    outcome.check(jobs.get(job_id).owner != first_owner, "the frozen worker still owns the job")
    frozen.signal_group(signal.SIGCONT)
    time.sleep(3)  # the continued worker settles its (killed) trainer: it must not touch the record
    outcome.check(job_status(job_id) == "completed", f"after SIGCONT the job is {job_status(job_id)}")
    outcome.check(resumed_from(job_id)[:1] == [good], f"resumed from {resumed_from(job_id)}, not {good}")
    return _finish(outcome, job_id, started, reached)


def same_host_other_namespace(lab: Lab) -> Outcome:
    """Two workers on one workspace with one hostname, each PID 1 of its own PID namespace (two containers that
    share a volume and a hostname). A claims a job and trains it (slowly; it holds at step 7, alive and beating);
    B starts meanwhile and reaps every second. A's pids mean nothing in B's namespace (B is PID 1 there too): B
    must leave the live job alone (one claim, A's; one trainer; each step logged once). Then A's whole namespace
    is killed: B takes the job over by its stale heartbeat alone, resumes it from checkpoint-6 and completes it,
    never two trainers at once."""
    outcome, started = Outcome("same hostname, two PID namespaces: a live job kept, a dead one taken over"), \
        time.monotonic()
    job_id = lab.submit()
    watch = _TrainerWatch(job_id).start()
    try:
        first = lab.worker(pid1=True, LORASTUDIO_STALL_AFTER_S="600",   # held, its heartbeat beats on
                           **fault_env("slow_steps:0.4,hang_at_step:7"))
        claim = wait_until(lambda: _claimed_with_trainer(job_id), what="worker A to claim the job and start training")
        second = lab.worker(pid1=True, **SLOW)
        second_id = wait_until(lambda: _worker_id(second), what="worker B to start (after its first reap)")
        holding = jobs.get(job_id).run_dir / ".fault-hang@7"     # the fault's marker: A holds at step 7
        wait_until(lambda: jobs.get(job_id).attempts != 1 or holding.exists(),
                   what="A to reach step 7 (or B to take the job)")
        time.sleep(3 * float(FAST_QUEUE_ENV["LORASTUDIO_REAP_EVERY_S"]))   # B reaps 3 more times meanwhile
        live = jobs.get(job_id)
        namespaces = {"A": _namespace(first), "B": _namespace(second)}
        outcome.check(None not in namespaces.values() and namespaces["A"] != namespaces["B"],
                      f"the workers do not run in two PID namespaces: {namespaces}")
        outcome.check(claim.owner.split(":")[1] == "1" == second_id.split(":")[1],
                      f"the workers are not PID 1 each ({claim.owner}, {second_id})")
        outcome.check((live.status, live.attempts, live.crashes) == ("running", 1, 0),
                      f"while A trained it, the job was {live.status} with attempts/crashes {live.attempts}/"
                      f"{live.crashes}, not running 1/0: B re-queued or claimed a live job")
        outcome.check(live.owner == claim.owner and live.trainer == claim.trainer,
                      f"while A trained it, the owner / trainer changed from {claim.owner} / {claim.trainer} to "
                      f"{live.owner} / {live.trainer}")
        outcome.check(watch.namespaces() == [namespaces["A"]],
                      f"trainers while A held the job ran in namespaces {watch.namespaces()}, not only A's")
        outcome.check(loss_steps(job_id) == list(range(1, 7)),
                      f"while A trained it, metrics.jsonl logged steps {loss_steps(job_id)}, not 1..6 once each")
        outcome.check(f"reaped job {job_id}" not in second.log.read_text(errors="replace"),
                      "B reaped the live job")
        first.kill_group()                                  # A's worker, its trainer: the whole namespace
        last_beat = jobs.get(job_id).heartbeat
        taken = wait_until(lambda: jobs.get(job_id).attempts >= 2 and time.time(), what="B to take the job over")
        wait_until(lambda: job_status(job_id) in ("completed", "failed"), what="the job to end under B")
    finally:
        watch.stop()
    stale = float(FAST_QUEUE_ENV["LORASTUDIO_STALE_AFTER_S"])
    outcome.check(taken - last_beat >= stale - 0.5, f"B took the job {taken - last_beat:.1f} s after A's last "
                                                    f"heartbeat, before it went stale ({stale:.0f} s)")
    outcome.check(jobs.get(job_id).owner == second_id, f"the job ended owned by {jobs.get(job_id).owner}, "
                                                       f"not by B ({second_id})")
    outcome.check(watch.namespaces() == [namespaces["A"], namespaces["B"]],
                  f"trainers ran in namespaces {watch.namespaces()}, not A's then B's")
    outcome.check(watch.most_at_once == 1, f"{watch.most_at_once} trainers of the job ran at once")
    outcome.check(resumed_from(job_id) == [6], f"resumed from {resumed_from(job_id)}, not [6]")
    outcome.note = f"B took over {taken - last_beat:.1f} s after A's last heartbeat"
    outcome = _finish(outcome, job_id, started, 7)
    outcome.check((outcome.attempts, outcome.crashes) == (2, 1), f"attempts/crashes {outcome.attempts}/"
                                                                 f"{outcome.crashes}, not 2/1")
    return outcome


def _claimed_with_trainer(job_id: str):
    job = jobs.get(job_id)
    return job if job.status == "running" and job.trainer else None


def _worker_id(service) -> str | None:
    """The owner id a worker logged at start (host:pid:start), once its first reap is done."""
    found = re.search(r"worker (\S+): \d+ slot", service.log.read_text(errors="replace"))
    return found.group(1) if found else None


def _namespace(service) -> str | None:
    """The PID namespace of a service's worker (the child of `unshare`, PID 1 there), as this process sees it."""
    import psutil
    try:
        children = psutil.Process(service.process.pid).children()
        return os.readlink(f"/proc/{children[0].pid}/ns/pid") if children else None
    except (psutil.Error, OSError):
        return None


class _TrainerWatch:
    """Samples every 0.2 s, from this (the outermost) PID namespace, the training processes of one job: how many
    ran at once, and the PID namespace of each in the order they appeared."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.seen: dict[int, str] = {}       # pid here -> its PID namespace, in order of appearance
        self.most_at_once = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "_TrainerWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)

    def namespaces(self) -> list[str]:
        """The namespaces of the trainers seen, in order, repeats of one in a row collapsed."""
        order = []
        for namespace in list(self.seen.values()):
            if not order or order[-1] != namespace:
                order.append(namespace)
        return order

    def _run(self) -> None:
        import psutil
        while not self.done.wait(0.2):
            running = []
            for process in psutil.process_iter(["cmdline", "status"]):
                cmdline = process.info["cmdline"] or []
                if "workers.train_process" in cmdline and self.job_id in cmdline \
                        and process.info["status"] != psutil.STATUS_ZOMBIE:
                    running.append(process.pid)
                    if process.pid not in self.seen:
                        try:
                            self.seen[process.pid] = os.readlink(f"/proc/{process.pid}/ns/pid")
                        except OSError:
                            pass
            self.most_at_once = max(self.most_at_once, len(running))


def hung_trainer(lab: Lab) -> Outcome:
    """A trainer that stops making progress (a step that never returns) while its process and heartbeat thread
    live on: its heartbeat stops after LORASTUDIO_STALL_AFTER_S, the worker kills it, the job resumes."""
    outcome, started = Outcome("hung trainer (a step that never returns)"), time.monotonic()
    job_id = lab.submit()
    worker = lab.worker(LORASTUDIO_STALL_AFTER_S="3", **fault_env("slow_steps:0.2,hang_at_step:5"))
    wait_until(lambda: job_status(job_id) in ("completed", "failed"), timeout=300, what="the job to end")
    outcome.check(worker.process.poll() is None, "the worker died")
    outcome.check("no training progress" in (jobs.get(job_id).run_dir / "train.log").read_text(),
                  "train.log does not say the trainer stalled")
    outcome.check("stopped beating" in worker.log.read_text(), "the worker log does not say why it killed it")
    outcome.check(resumed_from(job_id) == [3], f"resumed from {resumed_from(job_id)}, not [3]")
    outcome = _finish(outcome, job_id, started, 5)
    outcome.check(outcome.crashes == 1, f"{outcome.crashes} crashes counted, not 1")
    return outcome


def disk_full(lab: Lab, model_dir: Path, tmpfs_dir: Path, size_mb: int = 32) -> Outcome:
    """The workspace on a small tmpfs, filled at step 4: the save of checkpoint-6 fails. The job must end failed
    with a sentence that names the disk, keep checkpoint-3 intact, and finish after space is freed and Resume."""
    outcome, started = Outcome("disk full during a checkpoint"), time.monotonic()
    tmpfs_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(tmpfs_dir)], check=True)
    previous = os.environ["LORASTUDIO_HOME"]
    try:
        os.environ["LORASTUDIO_HOME"] = str(tmpfs_dir)
        from backend import models
        (tmpfs_dir / "models").mkdir()
        full = Lab(tmpfs_dir, models.import_model(model_dir, name=lab.model).name)
        try:
            job_id = full.submit()
            full.worker(**fault_env("slow_steps:0.2,fill_disk_at_step:4"))
            wait_until(lambda: _status_when_readable(job_id) in ("failed", "completed"), timeout=240,
                       what="the job to end on the full disk")
            job = jobs.get(job_id)
            outcome.check(job.status == "failed", f"the job is {job.status} on a full disk ({job.reason})")
            reason = job.reason or ""
            outcome.check(str(tmpfs_dir) in reason and "full" in reason, f"the reason does not name the full disk: "
                                                                         f"{reason!r}")
            outcome.note = reason
            outcome.check(complete_checkpoints(job_id) == [3] and not torn_checkpoints(job_id),
                          f"checkpoints after the failure: complete {complete_checkpoints(job_id)}, torn "
                          f"{torn_checkpoints(job_id)} (want [3] and none)")
            with sqlite3.connect(tmpfs_dir / "studio.db") as db:
                integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            outcome.check(integrity == "ok", f"studio.db integrity: {integrity}")
            (tmpfs_dir / "ballast").unlink()          # the user frees space and presses Resume
            resumed = subprocess.run([sys.executable, "-m", "cli", "jobs", "resume", job_id], capture_output=True,
                                     text=True, env=dict(os.environ))
            outcome.check(resumed.returncode == 0, f"jobs resume failed: {resumed.stderr.strip()}")
            wait_until(lambda: job_status(job_id) in ("failed", "completed"), timeout=240, what="the resumed job")
            outcome.check(resumed_from(job_id) == [3], f"resumed from {resumed_from(job_id)}, not [3]")
            outcome = _finish(outcome, job_id, started, 6)
        finally:
            full.close()
    finally:
        os.environ["LORASTUDIO_HOME"] = previous
        subprocess.run(["umount", "-l", str(tmpfs_dir)], check=False)
    return outcome


def _status_when_readable(job_id: str) -> str | None:
    """While the disk is full, opening studio.db can fail (SQLite recreates its WAL index on open): None then."""
    try:
        return job_status(job_id)
    except sqlite3.Error:
        return None


def export_killed(lab: Lab, job_id: str, point: str = "weights") -> Outcome:
    """kill -9 of `lorastudio export --merge` half-way through its merged weights (point "weights") or its zip
    ("zip"): nothing is listed for download, and the next export completes and lists one sound zip."""
    import zipfile

    from backend import export

    outcome, started = Outcome(f"kill -9 export while writing the {point}"), time.monotonic()
    out_dir = workspace.exports_dir() / job_id
    command = [sys.executable, "-m", "cli", "export", job_id, "--merge"]
    before = export.list_exports(job_id)   # an earlier, finished export stays listed (and sound)
    killed = subprocess.run(command, env=dict(os.environ, **fault_env(f"kill_in_export_{point}:1")),
                            capture_output=True, text=True)
    outcome.check(killed.returncode == -signal.SIGKILL, f"the export was not killed (exit {killed.returncode}: "
                                                        f"{killed.stderr.strip()[-200:]})")
    outcome.check(any(out_dir.glob(".*.partial")), "no half-written file was there to ignore")
    outcome.check(export.list_exports(job_id) == before, f"listed after the kill: {export.list_exports(job_id)}")
    again = subprocess.run(command + ["--json"], capture_output=True, text=True, env=dict(os.environ))
    outcome.check(again.returncode == 0, f"the export after the kill failed: {again.stderr.strip()[-300:]}")
    listed = export.list_exports(job_id)
    outcome.check(len(listed) == 1 and listed[0].path.suffix == ".zip", f"listed after a new export: {listed}")
    if listed:
        with zipfile.ZipFile(listed[0].path) as archive:
            outcome.check(archive.testzip() is None, "the new zip is damaged")
    left = [p.name for p in out_dir.glob(".*.partial")]
    outcome.check(not left, f"half-written files left behind: {left}")
    outcome.seconds, outcome.steps_lost = round(time.monotonic() - started, 1), 0
    return outcome
