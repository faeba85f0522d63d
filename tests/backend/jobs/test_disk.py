"""A full disk told apart from other failures, in one sentence; torn checkpoints removed first."""
from __future__ import annotations

import errno
import sqlite3

from backend.jobs import disk
from backend.jobs.checkpoints import remove_torn_checkpoints


def checkpoint(run_dir, step: int, complete: bool, size: int = 1000):
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * size)
    if complete:
        (folder / "COMPLETE").write_text("{}")
    return folder


def test_the_shapes_a_full_disk_takes_are_recognised():
    assert disk.looks_like_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert disk.looks_like_no_space(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64"))
    assert disk.looks_like_no_space(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("could not save the checkpoint") from inner
    except RuntimeError as outer:
        assert disk.looks_like_no_space(outer), "the cause of a wrapped error counts"
    assert not disk.looks_like_no_space(ValueError("loss became nan at step 3"))


def test_torn_checkpoints_are_removed_and_the_sentence_names_disk_space_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    checkpoint(run_dir, 3, complete=True, size=5000)
    checkpoint(run_dir, 6, complete=False, size=2000)
    torn, size = remove_torn_checkpoints(run_dir / "checkpoints")
    assert torn == ["checkpoint-6"] and size == 2000 and not (run_dir / "checkpoints" / "checkpoint-6").exists()
    reason = disk.disk_full_reason(OSError(errno.ENOSPC, "No space left on device"), run_dir, torn, size)
    assert reason.startswith(f"the disk at {disk.mount_point(run_dir)} is full: saving checkpoint-6 failed with ")
    assert "a checkpoint needs about 4.9 KB" in reason
    assert reason.endswith("then press Resume to continue from checkpoint-3")


def test_another_failure_with_room_to_spare_is_no_disk_failure(tmp_path):
    assert disk.disk_full_reason(ValueError("loss became nan"), tmp_path, [], 0) is None
