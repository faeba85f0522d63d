"""Several workers on one queue, several jobs: every job runs exactly once (SQLite here; two and three workers on
SQLite and Redis in `python -m bench reliability`; Redis's own queue path in tests/workers/test_redis_and_ddp.py)."""
from __future__ import annotations

import pytest

from tests.reliability import probes

pytestmark = pytest.mark.slow  # several worker processes train real jobs


def test_three_workers_on_the_sqlite_queue_run_each_job_once(lab):
    outcome = probes.many_workers(lab, workers=3, count=4)
    assert outcome.held, outcome
