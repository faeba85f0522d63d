"""First-start preparation: the bundled model converted, the demo datasets written."""
from __future__ import annotations

from backend import data, models, workspace


def prepare_workspace() -> str:
    """Idempotent; returns a short report for the console."""
    info = models.ensure_bundled_model()
    demos = data.ensure_demo_datasets()
    return (f"LoRA Studio workspace: {workspace.home()}\n"
            f"  bundled model {info.name} ready ({info.parameters / 1e6:.0f}M parameters)\n"
            f"  demo datasets: {', '.join(demos)}")
