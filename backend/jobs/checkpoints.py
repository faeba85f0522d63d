"""Checkpoint folders of a run: which are complete (a COMPLETE marker written after the trainer's save), which
are torn. No transformers import: the CLI, the UI and the adapters read this too."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

COMPLETE_MARKER = "COMPLETE"


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("-")[-1])


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def remove_torn_checkpoints(checkpoints_dir: Path) -> tuple[list[str], int]:
    """Delete every checkpoint folder without a COMPLETE marker (a save that failed or was cut off); returns
    their names (oldest first) and the bytes they held."""
    names, size = [], 0
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return names, size
    for folder in sorted(checkpoints_dir.glob("checkpoint-*"), key=checkpoint_step):
        if folder.is_dir() and not (folder / COMPLETE_MARKER).exists():
            size += folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            names.append(folder.name)
    return names, size


def latest_complete_checkpoint(checkpoints_dir: Path, remove_torn: bool = True) -> Optional[Path]:
    """The newest checkpoint with a COMPLETE marker; unmarked (torn) folders are removed first unless
    remove_torn is False (a read-only look, e.g. for `jobs show`)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    if remove_torn:
        remove_torn_checkpoints(checkpoints_dir)
    complete = [folder for folder in checkpoints_dir.glob("checkpoint-*")
                if folder.is_dir() and (folder / COMPLETE_MARKER).exists()]
    return max(complete, key=checkpoint_step, default=None)


def latest_checkpoint_name(run_dir: Path) -> str | None:
    """The newest complete checkpoint's folder name, without touching torn ones."""
    newest = latest_complete_checkpoint(Path(run_dir) / "checkpoints", remove_torn=False)
    return newest.name if newest else None
