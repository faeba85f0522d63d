"""A full disk during a checkpoint, and an export killed mid-write."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.reliability import probes

pytestmark = pytest.mark.slow  # each probe starts workers and trainers as processes


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_full_disk_fails_the_job_with_one_sentence_and_resume_finishes_it(lab, tiny_model_dir, tmp_path):
    outcome = probes.disk_full(lab, tiny_model_dir, tmp_path / "small-disk")
    assert outcome.held, outcome
    assert "is full" in outcome.note and "press Resume to continue from checkpoint-3" in outcome.note, outcome.note


def test_an_export_killed_mid_write_lists_nothing_and_the_next_one_completes(lab):
    from backend import jobs
    from backend.jobs import runner

    job_id = lab.submit(enqueue=False, max_steps=2, save_steps=2)
    jobs.update(job_id, status="running")  # claimed here, trained in this process
    assert runner.run_job(job_id).status == "completed"
    for point in ("weights", "zip"):
        outcome = probes.export_killed(lab, job_id, point)
        assert outcome.held, outcome
