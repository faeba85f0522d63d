"""Owner ids name one process incarnation in one PID namespace; only a live one of this host counts as alive."""
from __future__ import annotations

import os
import subprocess
import sys

from backend.jobs import owner


def test_this_process_is_alive_and_its_id_holds_host_namespace_pid_and_start():
    me = owner.owner_id()
    host, pid, start = me.split(":")
    assert host == owner.this_host() and pid == str(os.getpid()) and start == owner.process_start(os.getpid())
    assert owner.is_live_local_owner(me) and not owner.is_dead_owner(me)


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
