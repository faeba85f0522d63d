"""What every section of the quality report shares: the models compared, one metric's values, progress, errors.

A `Variant` is one column of the report: the base (the job's PEFT model with its adapters disabled, the same
weights, no second copy), the job's adapter, or a second job's adapter loaded by name on the same base.
A `Metric` is one figure per variant, with the direction that counts as better, so the UI draws every metric
as one grouped bar chart, the leaderboard sorts by it and the card prints it, without knowing the section.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields


def range_problems(settings) -> list[str]:
    """'name: value is outside low to high' for every dataclass field whose metadata gives a min and max."""
    out = []
    for f in fields(settings):
        value, low, high = getattr(settings, f.name), f.metadata.get("min"), f.metadata.get("max")
        if low is not None and not (low <= value <= high):
            out.append(f"{f.name}: {value} is outside {low} to {high}")
    return out


class EvalError(ValueError):
    """One sentence the user can act on: what is wrong, where, and how to fix it."""


@dataclass
class Variant:
    key: str                   # "base" | "adapter" | "compare"
    title: str                 # e.g. "adapter · final adapter" (what the UI and the card call it)
    model: object              # the loaded PeftModel (shared by every variant)
    adapter_name: str | None   # None: adapters disabled (the base)

    @contextmanager
    def active(self):
        """The shared model switched to this variant for the duration (base = adapters disabled)."""
        if self.adapter_name is None:
            with (self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else nullcontext()):
                yield self.model
        else:
            self.model.set_adapter(self.adapter_name)
            yield self.model


@dataclass
class Metric:
    section: str               # task | preference | forgetting | corpus | formats | benchmarks | judge
    name: str                  # machine name, unique within the section: "exact_match", "kl_per_token"
    label: str                 # what a person reads: "exact match"
    higher_is_better: bool
    values: dict[str, float | None] = field(default_factory=dict)   # variant key -> value
    help: str = ""             # one line: what it measures
    rows: int = 0              # how many rows the figure is over

    def to_dict(self) -> dict:
        return asdict(self)


class Progress:
    """Counts units of work and calls `callback(fraction, text)` with an ETA.

    The report gives each section a band of the bar (`band`) before it runs; the section then adds its own
    units (`add_total`) and advances through them, so the bar only moves forward even though a section learns
    how much work it has only when it starts. `callback` may be None (the CLI passes one that prints to stderr;
    the UI one that moves the bar).
    """

    def __init__(self, callback=None, total: int = 1):
        self.callback = callback or (lambda fraction, text: None)
        self.total = max(int(total), 1)
        self.done = 0
        self.low, self.high = 0.0, 1.0
        self.started = time.perf_counter()

    def band(self, low: float, high: float) -> None:
        """The next units fill the bar from `low` to `high` (fractions of the whole)."""
        self.low, self.high = low, max(low, high)
        self.done, self.total = 0, 0

    def add_total(self, units: int) -> None:
        self.total += max(int(units), 0)

    def advance(self, units: int = 1, text: str = "") -> None:
        self.done = min(self.done + units, self.total)
        self.report(text)

    def fraction(self) -> float:
        inside = self.done / self.total if self.total else 0.0
        return self.low + (self.high - self.low) * inside

    def report(self, text: str = "") -> None:
        fraction = self.fraction()
        elapsed = time.perf_counter() - self.started
        eta = elapsed / fraction - elapsed if 0 < fraction < 1 else None
        suffix = f" · ETA {eta:.0f} s" if eta is not None else ""
        self.callback(fraction, f"{text}{suffix}" if text else f"{self.done}/{self.total}{suffix}")


@dataclass
class RowResult:
    """One row of the per-row table: what was asked, the reference, each variant's answer and scores."""
    section: str
    row: int                                   # 1-based within the section
    prompt: str                                # the last user turn (or the whole prompt text), for the table
    reference: str = ""
    answers: dict[str, str] = field(default_factory=dict)               # variant key -> answer text
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)   # variant key -> metric -> value
    note: str = ""                             # e.g. the judge's reason, a parse error

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SectionResult:
    """What one section adds to the report."""
    section: str
    metrics: list[Metric] = field(default_factory=list)
    rows: list[RowResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # one sentence each: skipped parts and why, caveats
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"section": self.section, "metrics": [m.to_dict() for m in self.metrics],
                "rows": [r.to_dict() for r in self.rows], "notes": list(self.notes), "seconds": self.seconds}


@dataclass
class EvalContext:
    """Everything a section needs, loaded once per report (`backend.evaluate.report` builds it).

    `variants` share one PeftModel: variants[0] is the base (adapters disabled), then the job's adapter, then
    the compared job's adapter when one was picked. `settings` are the playground's decoding settings (greedy,
    same seed), so an answer here equals the playground's for the same prompt.
    """
    job_id: str
    config: object                  # backend.config.JobConfig of the job
    source: object                  # backend.models.adapters.AdapterSource (final adapter or newest checkpoint)
    tokenizer: object
    model: object                   # the PeftModel every variant switches
    variants: list[Variant]
    settings: object                # backend.serve.chat.GenerationSettings
    max_rows: int = 100             # rows per section at most (seeded subset when there are more)
    batch_size: int = 8             # generation / scoring batch (left padding for generation)
    seed: int = 42

    def variant(self, key: str) -> Variant:
        return next(v for v in self.variants if v.key == key)
