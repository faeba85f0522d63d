"""metrics.jsonl, read: one typed view used by the stages (results), the CLI (jobs show) and the UI (charts).

No transformers import: the Jobs tab reads metrics on every refresh. The writer is jobs.callbacks.MetricsCallback.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


# an eval row's cost relative to a training row (forward only: no backward pass, no optimizer step), used for
# the ETA until the job's first evaluation measured its own runtime (SmolLM2-135M on 2 CPU cores: 0.27)
EVAL_ROW_SHARE = 0.3


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
        """Recent seconds per step over the last `window` training log lines (None until two were logged); the
        evaluations that ran between them are not counted as training time."""
        timed = [(r["step"], r["elapsed_s"]) for r in self.records if "loss" in r and "elapsed_s" in r]
        if len(timed) < 2:
            return None
        (first_step, first_t), (last_step, last_t) = timed[max(0, len(timed) - window)], timed[-1]
        if last_step <= first_step:
            return None
        evaluating = sum(r["eval_runtime"] for r in self.records if _number(r.get("eval_runtime"))
                         and first_step <= r.get("step", 0) < last_step)
        return max(last_t - first_t - evaluating, 0.0) / (last_step - first_step)

    @property
    def eval_plan(self) -> dict:
        """The harness's eval plan ({eval_rows, eval_batches, eval_every, final_eval, rows_per_step}), {} if none."""
        plans = [r["eval_plan"] for r in self.records if isinstance(r.get("eval_plan"), dict)]
        return plans[-1] if plans else {}

    def seconds_per_eval(self) -> float | None:
        """The last evaluation's runtime; before the first one, an estimate: an eval row costs about
        EVAL_ROW_SHARE of a training row (a forward pass only). None without an eval split."""
        runtimes = self.series("eval_runtime")
        if runtimes:
            return runtimes[-1]
        plan, per_step = self.eval_plan, self.seconds_per_step()
        if not plan.get("eval_rows") or per_step is None:
            return None
        return per_step * plan["eval_rows"] / max(plan.get("rows_per_step") or 1, 1) * EVAL_ROW_SHARE

    def evals_left(self, step: int, total_steps: int) -> int:
        """Evaluations still to start after `step` (the eval of the last step too, until it was logged): every
        eval_every steps, and one after the last step."""
        plan = self.eval_plan
        if not plan.get("eval_rows"):
            return 0
        if step >= total_steps:  # the last step ran: its evaluation is still to come unless it was logged
            return 0 if any(_number(r.get("eval_loss")) and r.get("step") == step for r in self.records) else 1
        every = plan.get("eval_every") or 0
        count = (total_steps // every - step // every) if every and step < total_steps else 0
        ends_on_eval = every and total_steps % every == 0
        if plan.get("final_eval", True) and not ends_on_eval and step < total_steps:
            count += 1
        return count

    def eta_seconds(self, step: int, total_steps: int, eval_done: int = 0, eval_total: int = 0) -> float | None:
        """Remaining steps x the recent seconds per step, plus the evaluations still to run (the one running now,
        `eval_done` of `eval_total` batches, by what is left of it)."""
        per_step = self.seconds_per_step()
        if per_step is None or not total_steps:
            return None
        eta = max(total_steps - step, 0) * per_step
        per_eval = self.seconds_per_eval()
        if per_eval:
            if eval_total:  # the eval running now (the one of `step`), then those of later steps
                eta += per_eval * max(eval_total - eval_done, 0) / eval_total
                eta += (self.evals_left(step, total_steps) if step < total_steps else 0) * per_eval
            else:
                eta += self.evals_left(step, total_steps) * per_eval
        return round(eta, 1)
