"""Two workers with one hostname in two PID namespaces (two containers sharing a volume and a hostname): a pid of
the other namespace says nothing, so a live job keeps its one claim and its one trainer, and a dead worker's job
is taken over by its stale heartbeat alone, each step logged once."""
from __future__ import annotations

import pytest

from tests.reliability import probes
from tests.reliability.lab import can_unshare

pytestmark = pytest.mark.slow  # workers in PID namespaces train real jobs


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1) for PID namespaces")
def test_a_worker_in_another_namespace_leaves_a_live_job_alone_and_takes_over_a_dead_one(lab):
    outcome = probes.same_host_other_namespace(lab)
    assert outcome.held, outcome
