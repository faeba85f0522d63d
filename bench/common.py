"""Shared bits for benchmarks: a Markdown table, the machine line, a scratch workspace."""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
from contextlib import contextmanager
from datetime import date
from pathlib import Path


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine_line() -> str:
    import torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{date.today().isoformat()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
            f"{device} · torch {torch.__version__} · python {platform.python_version()}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def scratch_workspace():
    """A throwaway $LORASTUDIO_HOME that reuses the user's converted bundled model when there is one."""
    real_models = Path(os.environ.get("LORASTUDIO_HOME") or Path.home() / ".lorastudio").expanduser() / "models"
    previous = os.environ.get("LORASTUDIO_HOME")
    with tempfile.TemporaryDirectory(prefix="lorastudio-bench-") as folder:
        os.environ["LORASTUDIO_HOME"] = folder
        (Path(folder) / "models").mkdir()
        bundled = real_models / "smollm2-135m-instruct"
        if (bundled / "studio_model.json").exists():
            (Path(folder) / "models" / bundled.name).symlink_to(bundled.resolve(), target_is_directory=True)
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("LORASTUDIO_HOME", None)
            else:
                os.environ["LORASTUDIO_HOME"] = previous


def registered_model(model: str) -> str:
    """The registry name a benchmark trains on: the bundled model (converted once), or a model folder (a tiny model
    in tests) imported as "bench-model"; any other name is taken as already registered."""
    from backend import models
    if model == "smollm2-135m-instruct":
        models.ensure_bundled_model()
    elif Path(model).is_dir():
        model = models.import_model(Path(model), name="bench-model").name
    return model


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
