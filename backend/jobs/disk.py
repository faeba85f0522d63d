"""A full disk, told apart from other failures, in one sentence that names the disk and the space needed.

A write that runs out of space surfaces in many shapes: OSError ENOSPC from Python, torch's zip writer
("unexpected pos", "file write failed"), SQLite ("database or disk is full"), safetensors. The error chain is
searched for them, and the free space of the run's disk is measured as a second opinion.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from backend.jobs.checkpoints import folder_bytes, latest_complete_checkpoint

_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "database or disk is full",
                  "file write failed", "unexpected pos")
# below this much free space a failed write is taken for a full disk whatever the error says
MIN_FREE_BYTES = 1 << 20


def mount_point(path: Path) -> Path:
    path = Path(path).resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def looks_like_no_space(error: BaseException | None) -> bool:
    """The error, or one it was raised from, says the disk is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _NO_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def human(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def disk_full_reason(error: BaseException, run_dir: Path, torn: list[str], torn_bytes: int) -> str | None:
    """One sentence when `error` came from a full disk under run_dir (None otherwise): which disk, how much is
    free, about how much the next checkpoint needs, and what Resume will continue from."""
    run_dir = Path(run_dir)
    free = shutil.disk_usage(run_dir).free
    if not looks_like_no_space(error) and free - torn_bytes >= MIN_FREE_BYTES:
        return None
    newest = latest_complete_checkpoint(run_dir / "checkpoints", remove_torn=False)
    needed = max(folder_bytes(newest) if newest else 0, torn_bytes)
    where = f"saving {torn[-1]}" if torn else "writing the run's files"
    disk = mount_point(run_dir)
    need = f"; a checkpoint needs about {human(needed)}" if needed else ""
    then = f"continue from {newest.name}" if newest else "start again"
    return (f"the disk at {disk} is full: {where} failed with {human(max(free - torn_bytes, 0))} free{need}; "
            f"free space there (or move the workspace), then press Resume to {then}")
