"""Who holds a job: owner ids of one process *incarnation*, `host:pid:start`, and what this host can tell of them.

A worker's id is the job's owner; the training process's id is its trainer. The start time (clock ticks since
boot, from /proc) tells a restarted worker that got the same pid (PID 1 in a container, always) from the dead
one that claimed the job. `host` is the hostname and the PID namespace (`vm/4026531836`): pids mean nothing
across namespaces (two containers sharing a hostname both have a PID 1), so an owner in another namespace is
judged like one on another machine, by its heartbeat alone. No torch or transformers import.
"""
from __future__ import annotations

import os
import signal
import socket
import time


def owner_id() -> str:
    """host:pid:start of this process: one incarnation of it."""
    return f"{this_host()}:{os.getpid()}:{process_start(os.getpid())}"


def this_host() -> str:
    """The hostname and, where /proc says, this PID namespace's number: the scope in which a pid means a process."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}" if namespace else socket.gethostname()


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc does not say, e.g. not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            # the command name (field 2) may hold spaces; the fields after its closing parenthesis do not
            return handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _parse_owner(owner: str) -> tuple[str, str, str | None]:
    """(host, pid, start or None) of an owner id; `inline:` ids and older host:pid ids included."""
    parts = owner.removeprefix("inline:").split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), parts[-2], parts[-1]
    return ":".join(parts[:-1]), parts[-1], None


def is_dead_owner(owner: str | None) -> bool:
    """True when the owner ran on this host and that process is gone: no such pid, or the pid now belongs to
    another process (a restarted worker with the same pid). Another host's owner: only the heartbeat tells."""
    if not owner or owner == owner_id():
        return False
    host, pid, start = _parse_owner(owner)
    if host != this_host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return bool(start) and process_start(int(pid)) not in ("", start)


def is_live_local_owner(owner: str | None) -> bool:
    """The owner is a process on this host that is still alive (this worker included)."""
    if not owner:
        return False
    host, pid, _ = _parse_owner(owner)
    if host != this_host() or not pid.isdigit():
        return False
    return not is_dead_owner(owner)


def kill_local_process(process_id: str | None, wait_s: float = 10.0) -> bool:
    """SIGKILL the process `process_id` (host:pid:start, as owner_id gives) when it runs on this host as that
    very incarnation; True when it was alive and is gone now."""
    if not process_id:
        return False
    host, pid, start = _parse_owner(process_id)
    if host != this_host() or not pid.isdigit() or int(pid) == os.getpid() or not start:
        return False
    if process_start(int(pid)) != start:
        return False  # gone already, or the pid was reused
    try:
        os.kill(int(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + wait_s
    while process_start(int(pid)) == start and time.monotonic() < deadline:
        time.sleep(0.1)  # a zombie keeps its /proc entry until reaped by its parent; the kill itself is done
        if _is_zombie(int(pid)):
            break
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
