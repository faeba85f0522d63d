"""kill -9 at every level (worker group, trainer inside checkpoint saves, the app), in the same PID namespace and
as PID 1 of a new one; a hung trainer. Each job must complete, resumed from its newest complete checkpoint, each
step logged once, with its crashes counted right. (A kill of the trainer between saves, every save point, every
restart mode, SIGTERM twice then a crash, and a frozen worker run in `python -m bench reliability`; the suite keeps
one probe of each kind of damage, so it stays under 30 minutes on 2 cores.)"""
from __future__ import annotations

import pytest

from tests.reliability import probes
from tests.reliability.lab import can_unshare

pytestmark = pytest.mark.slow  # each probe starts workers and trainers as processes

needs_pid_namespace = pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) for a PID namespace")

ATTACKS = [
    pytest.param(probes.kill_worker_group, {}, id="worker-group"),
    pytest.param(probes.kill_in_save, {"points": ("weights", "marker")}, id="trainer-in-saves"),
    pytest.param(probes.kill_in_save, {"points": ("optimizer", "state"), "restart": "pid1"},
                 id="pid-1-worker-group-in-saves", marks=needs_pid_namespace),
    pytest.param(probes.kill_app, {}, id="app-with-embedded-worker"),
    pytest.param(probes.hung_trainer, {}, id="hung-trainer"),
]


@pytest.mark.parametrize(("attack", "settings"), ATTACKS)
def test_the_job_survives(lab, attack, settings):
    outcome = attack(lab, **settings)
    assert outcome.held, outcome
