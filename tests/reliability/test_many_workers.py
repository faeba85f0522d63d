"""Several workers on one queue, several jobs: every job runs exactly once (SQLite and Redis)."""
from __future__ import annotations

import pytest

from tests.reliability import probes

pytestmark = pytest.mark.slow  # several worker processes train real jobs


def test_three_workers_on_the_sqlite_queue_run_each_job_once(lab):
    outcome = probes.many_workers(lab, workers=3, count=4)
    assert outcome.held, outcome


def test_two_workers_on_redis_run_each_job_once(lab, redis_url):
    outcome = probes.many_workers(lab, workers=2, count=3, redis_url=redis_url)
    assert outcome.held, outcome
