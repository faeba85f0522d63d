"""kill -9 of the trainer inside checkpoint saves, in the same PID namespace and as PID 1 of a new one. Each job must
complete, resumed from its newest complete checkpoint, each step logged once, with its crashes counted right.
The suite keeps one probe of each kind of damage (kill -9 inside a save here, PID-1 restart here, stale claim in
tests/workers/test_reap.py, full disk in test_disk_and_export.py, preempt in tests/workers/test_queue.py); the
whole matrix runs in `python -m bench reliability`: a kill of the worker group, of the app with its embedded
worker and of the trainer between saves, a hung trainer, every save point and restart mode, SIGTERM twice then a
crash, a frozen worker, two and three workers on SQLite and Redis, an export killed at each point (issue 31 moved
the worker-group, app, hung-trainer, Redis-workers and killed-export probes there to keep the suite <= 15 min)."""
from __future__ import annotations

import pytest

from tests.reliability import probes
from tests.reliability.lab import can_unshare

pytestmark = pytest.mark.slow  # each probe starts workers and trainers as processes

needs_pid_namespace = pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) for a PID namespace")

ATTACKS = [
    pytest.param(probes.kill_in_save, {"points": ("weights", "marker")}, id="trainer-in-saves"),
    pytest.param(probes.kill_in_save, {"points": ("optimizer", "state"), "restart": "pid1"},
                 id="pid-1-worker-group-in-saves", marks=needs_pid_namespace),
]


@pytest.mark.parametrize(("attack", "settings"), ATTACKS)
def test_the_job_survives(lab, attack, settings):
    outcome = attack(lab, **settings)
    assert outcome.held, outcome
