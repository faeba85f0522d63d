"""The validation report: what was read, what is usable for which stage, and every problem with its place.

A Problem is one finding without its row (the normalisers in formats produce them); the IssueLog adds the row
and groups them: the same message on the same field (list indexes ignored) is one entry with a count and the
first few rows, so a 100k-row file with one systematic mistake gives one line, not 100k.
`row` is the 1-based line number for JSONL and CSV files and the 1-based item number for JSON arrays,
Parquet files and saved datasets.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field

FIRST_ROWS_KEPT = 5   # rows listed per grouped problem


@dataclass(frozen=True)
class Problem:
    severity: str                          # "error" | "warning"
    field: str | None                      # e.g. "messages[2].content"
    message: str                           # one line: what is wrong and how to fix it (no row number)
    stages: tuple[str, ...] | None = None  # stages the problem matters for (None: all)


@dataclass
class IssueGroup:
    severity: str                      # "error" | "warning"
    message: str                       # one line: what is wrong and how to fix it (no row number)
    field: str | None = None           # field of the first occurrence, e.g. "messages[2].content"
    row: int | None = None             # first row (None: the whole file)
    rows: list[int] = dc_field(default_factory=list)
    count: int = 0
    stages: list[str] | None = None    # stages the problem matters for (None: all)
    _last_row: int | None = dc_field(default=None, repr=False, compare=False)

    def applies_to(self, stage: str | None) -> bool:
        return stage is None or self.stages is None or stage in self.stages

    def sentence(self, file: str | None = None) -> str:
        """One sentence: where (file, row, field), then what and how to fix."""
        if file and self.row is None and not self.field and (self.message.startswith(file)
                                                             or f"'{file}'" in self.message):
            file = None          # the message names the file already: say it once
        where = [f"{file}" if file else None,
                 f"row {self.row}" if self.row is not None else None,
                 f"field '{self.field}'" if self.field else None]
        prefix = ", ".join(w for w in where if w)
        more = ""
        if self.count > 1:
            others = [str(r) for r in self.rows[1:]]
            more = f" (and {self.count - 1} more like it" + (f", e.g. rows {', '.join(others)}" if others else "") + ")"
        return f"{prefix}: {self.message}{more}" if prefix else f"{self.message}{more}"

    def to_dict(self) -> dict:
        return {"row": self.row, "rows": list(self.rows), "field": self.field, "message": self.message,
                "count": self.count, "stages": self.stages}


class IssueLog:
    """Collects problems, grouping identical ones; memory stays bounded however many rows are bad."""

    def __init__(self):
        self._groups: dict[tuple, IssueGroup] = {}
        self.bad_rows: dict[int, set[str] | None] = {}   # row -> stages it is unusable for (None: all)

    def add(self, severity: str, message: str, row: int | None = None, field: str | None = None,
            stages: tuple[str, ...] | None = None) -> None:
        key = (severity, message, re.sub(r"\[\d+\]", "[]", field) if field else None, stages)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = IssueGroup(severity, message, field, row, [],
                                                   0, [str(s) for s in stages] if stages else None)
        # one count per row: a row with the same problem in several messages counts once
        if row is None or row != group._last_row:
            group.count += 1
            group._last_row = row
            if row is not None and len(group.rows) < FIRST_ROWS_KEPT:
                group.rows.append(row)
        if severity == "error" and row is not None:
            if stages is None:
                self.bad_rows[row] = None
            elif row not in self.bad_rows:
                self.bad_rows[row] = set(stages)
            elif self.bad_rows[row] is not None:
                self.bad_rows[row].update(stages)

    def record(self, problem: Problem, row: int | None = None) -> None:
        self.add(problem.severity, problem.message, row, problem.field, problem.stages)

    def error(self, message, row=None, field=None, stages=None):
        self.add("error", message, row, field, stages)

    def warning(self, message, row=None, field=None, stages=None):
        self.add("warning", message, row, field, stages)

    def row_ok(self, row: int, stage: str) -> bool:
        if row not in self.bad_rows:
            return True
        stages = self.bad_rows[row]
        return stages is not None and stage not in stages

    def groups(self, severity: str) -> list[IssueGroup]:
        return [g for g in self._groups.values() if g.severity == severity]


@dataclass
class StageCompat:
    usable: bool
    rows: int = 0                      # rows the stage would train on
    reason: str | None = None          # why not usable (one sentence), or a note when usable

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValidationReport:
    path: str | None
    format: str | None                 # detected format name (see formats.FORMATS), None when undetected
    kind: str | None = None            # "chat" | "preference" | "kto"
    rows: int = 0                      # rows read (valid or not)
    usable_rows: int = 0               # rows without errors (before stage conversion)
    stage: str | None = None           # the stage asked for, if any
    stages: dict[str, StageCompat] = dc_field(default_factory=dict)
    errors: list[IssueGroup] = dc_field(default_factory=list)
    warnings: list[IssueGroup] = dc_field(default_factory=list)
    columns: list[str] = dc_field(default_factory=list)
    ignored_columns: list[str] = dc_field(default_factory=list)   # columns the detected format does not read
    column_mapping: dict | None = None
    content_hash: str | None = None
    file_size: int | None = None
    max_length: int | None = None
    eval_fraction: float = 0.0
    split: dict | None = None          # {"train": n, "eval": m} for the asked (or first usable) stage
    token_lengths: dict | None = None  # {min, median, p95, max} after the chat template; None without tokenizer
    token_note: str | None = None      # why token_lengths is missing when a tokenizer cannot be the reason
    over_max_length: dict | None = None   # {"rows": n truncated, "answer_lost": m with no trained token left}
    turns: dict | None = None          # messages per row {min, mean, max}
    label_balance: dict | None = None  # KTO: {"desirable": n, "undesirable": m}
    reasoning: dict | None = None      # rows whose answers have a <think> section: {"with", "empty", "without"}
    tool_call_rows: int = 0            # rows whose trained answers call a tool
    tool_format: str | None = None     # with a tokenizer and tool calls: "template" (its own) | "hermes" (studio's)
    # raw text (pretrain): {documents, tokens, blocks, block_length, tail_tokens, longest: [{row, source, tokens}]}
    text_stats: dict | None = None
    length_values: list[int] = dc_field(default_factory=list, repr=False)   # sorted token lengths (not in JSON)

    def usable_for(self, stage: str) -> bool:
        compat = self.stages.get(stage)
        return bool(compat and compat.usable)

    @property
    def ok(self) -> bool:
        """Usable for the asked stage, or for at least one stage when none was asked."""
        if self.stage:
            return self.usable_for(self.stage)
        return any(c.usable for c in self.stages.values())

    def errors_for(self, stage: str | None) -> list[IssueGroup]:
        return [g for g in self.errors if g.applies_to(stage)]

    def first_problem(self, stage: str | None = None) -> str | None:
        """The sentence to show when the dataset cannot be used: the stage reason or the first error."""
        name = self.path and self.path.rsplit("/", 1)[-1]
        errors = self.errors_for(stage)
        if errors:
            return errors[0].sentence(name)
        if stage and stage in self.stages and not self.stages[stage].usable:
            return self.stages[stage].reason
        return None

    def to_dict(self) -> dict:
        data = {
            "path": self.path, "format": self.format, "kind": self.kind, "rows": self.rows,
            "usable_rows": self.usable_rows, "stage": self.stage, "ok": self.ok,
            "stages": {name: compat.to_dict() for name, compat in self.stages.items()},
            "errors": [g.to_dict() for g in self.errors],
            "warnings": [g.to_dict() for g in self.warnings],
            "columns": self.columns, "ignored_columns": self.ignored_columns,
            "column_mapping": self.column_mapping,
            "content_hash": self.content_hash, "file_size": self.file_size,
            "max_length": self.max_length, "eval_fraction": self.eval_fraction, "split": self.split,
            "token_lengths": self.token_lengths, "token_note": self.token_note, "over_max_length": self.over_max_length,
            "turns": self.turns, "label_balance": self.label_balance, "text_stats": self.text_stats,
            "reasoning": self.reasoning, "tool_call_rows": self.tool_call_rows, "tool_format": self.tool_format,
        }
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "ValidationReport":
        groups = lambda key, sev: [IssueGroup(severity=sev, **g) for g in data.get(key, [])]
        fields = {k: data.get(k) for k in (
            "path", "format", "kind", "rows", "usable_rows", "stage", "columns", "ignored_columns",
            "column_mapping", "content_hash", "file_size", "max_length", "eval_fraction", "split", "token_lengths",
            "token_note", "over_max_length", "turns", "label_balance", "text_stats", "reasoning",
            "tool_call_rows", "tool_format")}
        fields = {k: v for k, v in fields.items() if v is not None}
        return cls(**{"path": None, "format": None, **fields},
                   stages={k: StageCompat(**v) for k, v in data.get("stages", {}).items()},
                   errors=groups("errors", "error"), warnings=groups("warnings", "warning"))
