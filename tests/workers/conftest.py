"""Real consumer subprocesses on the test's temporary workspace (the `lab` fixture of tests/conftest.py; the
machinery is tests/reliability/lab.py, shared with the reliability probes)."""
from __future__ import annotations

import pytest


@pytest.fixture
def start_worker(lab):
    """start_worker(pid1=False, **env): a `lorastudio worker` subprocess on the test's workspace."""
    return lab.worker


@pytest.fixture
def submit(lab):
    """submit(enqueue_it=True, **training): a job on the tiny model, queued; returns its id."""
    return lambda enqueue_it=True, **training: lab.submit(enqueue=enqueue_it, **training)
