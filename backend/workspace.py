"""Where everything the app writes lives: $LORASTUDIO_HOME (default ~/.lorastudio).

Layout (a contract, see docs/ARCHITECTURE.md):
    studio.db, queue.db, models/<name>/, datasets/<id>/, runs/<job_id>/, exports/<job_id>/, presets/, serve/
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = PROJECT_ROOT / "presets"


def home() -> Path:
    """The workspace root, created on first use."""
    root = Path(os.environ.get("LORASTUDIO_HOME") or Path.home() / ".lorastudio").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    return _sub("models")


def datasets_dir() -> Path:
    return _sub("datasets")


def runs_dir() -> Path:
    return _sub("runs")


def exports_dir() -> Path:
    return _sub("exports")


def serve_dir() -> Path:
    """The API server started from the app: its state file and log."""
    return _sub("serve")


def user_presets_dir() -> Path:
    """Presets saved from the UI (the bundled presets/ folder stays read-only)."""
    return _sub("presets")


def run_dir(job_id: str) -> Path:
    return runs_dir() / job_id


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_inside(path: Path, root: Path) -> bool:
    """True when `path` resolves to somewhere under `root` (symlinks followed)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False
