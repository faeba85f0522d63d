"""A full disk during a checkpoint (an export killed mid-write, at each point, runs in `python -m bench reliability`;
downloads of half-written exports are refused in tests/ui/test_security.py)."""
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

