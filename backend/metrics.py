"""metrics.jsonl, read: one typed view used by the stages (results), the CLI (jobs show) and the UI (charts).

No transformers import: the Jobs tab reads metrics on every refresh. The writer is jobs.callbacks.MetricsCallback.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def read_records(path: Path) -> list[dict]:
    """All metric records; a half-written last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Metrics:
    """The records of one run with the questions every reader asks of them."""
    records: tuple[dict, ...] = ()

    @classmethod
    def read(cls, path: Path) -> "Metrics":
        return cls(tuple(read_records(path)))

    def series(self, key: str) -> list:
        """The logged numeric values of one key, in order."""
        return [record[key] for record in self.records if _number(record.get(key))]

    @property
    def losses(self) -> list[float]:
        return self.series("loss")

    @property
    def eval_losses(self) -> list[float]:
        return self.series("eval_loss")

    @property
    def last_loss(self) -> float | None:
        losses = self.losses
        return losses[-1] if losses else None

    @property
    def last_eval_loss(self) -> float | None:
        losses = self.eval_losses
        return losses[-1] if losses else None

    def last_training_value(self, key: str):
        """The last value of `key` on a training log line (one with a loss), or None."""
        values = [record[key] for record in self.records if _number(record.get(key)) and "loss" in record]
        return values[-1] if values else None

    def seconds_per_step(self, window: int = 10) -> float | None:
        """Recent seconds per step over the last `window` training log lines (None until two were logged)."""
        timed = [(r["step"], r["elapsed_s"]) for r in self.records if "loss" in r and "elapsed_s" in r]
        if len(timed) < 2:
            return None
        (first_step, first_t), (last_step, last_t) = timed[max(0, len(timed) - window)], timed[-1]
        if last_step <= first_step:
            return None
        return (last_t - first_t) / (last_step - first_step)

    def eta_seconds(self, step: int, total_steps: int) -> float | None:
        """Remaining steps x the recent seconds per step."""
        per_step = self.seconds_per_step()
        if per_step is None or not total_steps:
            return None
        return round((total_steps - step) * per_step, 1)
