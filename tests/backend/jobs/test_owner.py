"""Owner ids name one process incarnation in one PID namespace; only a live one of this host counts as alive."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from backend.jobs import owner


def test_this_process_is_alive_and_its_id_holds_host_namespace_pid_and_start():
    me = owner.owner_id()
    host, pid, start = me.split(":")
    assert host == owner.this_host() and pid == str(os.getpid()) and start == owner.process_start(os.getpid())
    assert owner.is_live_local_owner(me) and not owner.is_dead_owner(me)
    if os.path.exists("/proc/self/ns/pid"):  # the namespace's number, as the kernel gives it (Linux)
        assert host == f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"


def test_a_reused_pid_or_a_gone_process_is_dead_and_another_namespace_is_not_judged():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = owner.process_start(child.pid)
        assert owner.is_live_local_owner(f"{owner.this_host()}:{child.pid}:{start}")
        assert owner.is_dead_owner(f"{owner.this_host()}:{child.pid}:{int(start) - 1}"), "same pid, older start"
        other_namespace = f"{owner.this_host().split('/')[0]}/1:{child.pid}:{int(start) - 1}"
        assert not owner.is_dead_owner(other_namespace), "a pid of another namespace says nothing here"
        assert not owner.kill_local_process(f"{owner.this_host()}:{child.pid}:{int(start) - 1}"), "not that one"
        assert owner.kill_local_process(f"{owner.this_host()}:{child.pid}:{start}")
        assert child.wait(timeout=10) == -9
    finally:
        child.kill()
        child.wait()
    assert owner.is_dead_owner(f"{owner.this_host()}:{child.pid}:{start}")


def test_the_reaper_judges_a_claim_of_another_namespace_by_its_heartbeat_alone_and_kills_nothing_here(monkeypatch):
    """Same hostname, another PID namespace: its PID 1 is not ours and its trainer's pid names another process
    here, even with the same start time; a fresh heartbeat keeps the claim, a stale one ends it, nothing is killed."""
    from backend import jobs
    from backend.config import JobConfig
    from workers import consumer

    monkeypatch.setenv("LORASTUDIO_STALE_AFTER_S", "5")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        start = owner.process_start(bystander.pid)
        there = f"{socket.gethostname()}/1"
        job = jobs.create(JobConfig.from_dict({"model": "tiny-llama"}))
        assert jobs.claim(job.id, f"{there}:1:{start}")                 # PID 1 there, like ours but not ours
        jobs.update(job.id, trainer=f"{there}:{bystander.pid}:{start}")  # pid and start of a process here
        assert consumer.reap() == [] and jobs.get(job.id).status == "running"
        jobs.update(job.id, heartbeat=time.time() - 10)
        assert consumer.reap() == [job.id]
        reaped = jobs.get(job.id)
        assert reaped.status == "interrupted" and "stopped responding" in reaped.reason
        assert bystander.poll() is None, "a process of this namespace was killed for a trainer of another"
    finally:
        bystander.kill()
        bystander.wait()
