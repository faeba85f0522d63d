"""Validation: stream a dataset once, detect its shape, normalise every row and report every problem.

Errors block a stage (nothing is trained while any row has an error, unless the caller explicitly skips
invalid rows); warnings do not. Checks: file-level (path, size, binary, pickle, encoding, JSON syntax),
per row (invalid JSON, missing / empty / non-string content, unknown roles, no final assistant turn for SFT,
chosen == rejected, non-boolean labels, exact duplicates, rows over the per-row size limit, unfilled template
placeholders such as {{name}}), per file (columns the detected format does not read), per stage
(format compatibility, at least MIN_ROWS rows, room for the eval split) and, with a tokenizer, token
lengths after the chat template (rows cut by max_length, rows that would lose their whole answer).
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from backend.data import formats, toolcalls
from backend.data.formats import Kind
from backend.data.readers import FileRejected, Record, content_hash, inspect_file, read_records
from backend.data.report import IssueLog, Problem, StageCompat, ValidationReport
from backend.vocab import Stage

MIN_ROWS = 10            # fewer usable rows than this is not a training set
DETECT_SAMPLE = 100      # rows looked at to decide the format
DEFAULT_MAX_LENGTH = 512
DEFAULT_EVAL_FRACTION = 0.1
PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.\- ]{0,40}?\s*\}\}")


@dataclass
class Scan:
    """A validated dataset: the report plus the canonical rows (with their source row numbers)."""
    report: ValidationReport
    log: IssueLog
    kind: Kind | None = None
    rows: list[tuple[int, dict]] = field(default_factory=list)

    def stage_rows(self, stage: str, skip_invalid: bool = True) -> list[dict]:
        out = []
        for number, canon in self.rows:
            if skip_invalid and not self.log.row_ok(number, stage):
                continue
            out.extend(formats.to_stage(canon, self.kind, stage))
        return out

    def stage_rows_numbered(self, stage: str) -> list[tuple[int, dict]]:
        return [(n, r) for n, canon in self.rows if self.log.row_ok(n, stage)
                for r in formats.to_stage(canon, self.kind, stage)]

    def count_stage_rows(self, stage: str) -> int:
        """len(stage_rows(stage)) without building the rows."""
        ok = [canon for n, canon in self.rows if self.log.row_ok(n, stage)]
        if stage == Stage.SFT and self.kind == Kind.KTO:
            return sum(1 for canon in ok if canon["label"])
        if stage == Stage.KTO and self.kind == Kind.PREFERENCE:
            return 2 * len(ok)
        return len(ok) if self.kind is not None and stage in self.kind.stages else 0


def split_sizes(n: int, eval_fraction: float) -> tuple[int, int]:
    """(train rows, eval rows) for an eval_fraction (the trainer should split with the same numbers)."""
    if eval_fraction <= 0 or n == 0:
        return n, 0
    n_eval = round(n * eval_fraction)
    return n - n_eval, n_eval


def scan(path: str | Path, column_mapping: dict | None = None, format_name: str | None = None,
         display_name: str | None = None) -> Scan:
    """Read, detect and normalise; stage checks are added by `finish`."""
    report = ValidationReport(path=str(display_name or path), format=None, column_mapping=column_mapping)
    log = IssueLog()
    result = Scan(report, log)
    try:
        resolved, reader_kind, size = inspect_file(path)
        report.file_size = size
        report.content_hash = content_hash(resolved)
        _read_rows(result, read_records(resolved, reader_kind), column_mapping, format_name)
    except FileRejected as exc:
        log.error(str(exc))
    return result


def _read_rows(result: Scan, records, mapping, format_name) -> None:
    report, log = result.report, result.log
    if format_name is not None and format_name not in formats.FORMATS:
        raise FileRejected(f"unknown format {format_name!r}; use one of {', '.join(formats.FORMATS)}")
    buffer: list[Record] = []
    fmt, kind = None, None
    seen: set[int] = set()      # hashes of raw rows: exact duplicates
    rows = result.rows
    columns: dict[str, None] = {}
    read_columns: dict[str, str] = {}     # column after the mapping -> the column in the file

    def handle(rec: Record) -> None:
        data = formats.apply_mapping(rec.data, mapping) if mapping else rec.data
        if any(k not in read_columns for k in data):          # a column not seen before (rare: cheap)
            for key in rec.data:
                columns.setdefault(key, None)
            for key in data:
                if key not in read_columns:
                    source = (mapping or {}).get(key)
                    read_columns[key] = source if source in rec.data else key
        _placeholders(data, formats.FORMATS[fmt].columns, rec.row, log)
        key = rec.key if rec.key is not None else hash(json.dumps(rec.data, sort_keys=True, default=str))
        if key in seen:
            log.warning("exact duplicate of an earlier row, so it counts twice in training; remove it "
                        "if that is not intended", rec.row)
        else:
            seen.add(key)
        problems: list[Problem] = []
        canon = formats.normalise(fmt, data, problems)
        for problem in problems:
            log.record(problem, rec.row)
        if canon is not None:
            rows.append((rec.row, canon))

    def decide() -> bool:
        nonlocal fmt, kind
        for rec in buffer[:DETECT_SAMPLE]:
            columns.update(dict.fromkeys(rec.data))
        if format_name:
            fmt = format_name
        else:
            sample = [formats.apply_mapping(r.data, mapping) if mapping else r.data for r in buffer]
            fmt, reason = formats.detect_format(sample)
            if fmt is None:
                log.error(reason)
                return False
        kind = formats.FORMATS[fmt].kind
        for rec in buffer:
            handle(rec)
        buffer.clear()
        return True

    count = 0
    detected = None
    for item in records:
        count += 1
        if not isinstance(item, Record):
            log.error(item.message, item.row, item.field)
            continue
        if detected is None:
            buffer.append(item)
            if len(buffer) >= DETECT_SAMPLE:
                detected = decide()
        elif detected:
            handle(item)
    if detected is None:
        detected = decide() if buffer or format_name else False
        if not detected and not log.groups("error"):
            log.error("the file holds no rows; add at least 10 rows")
    report.rows = count
    report.columns = list(columns)
    report.format, report.kind = fmt, (kind.value if kind else None)
    if fmt:
        for column, source in read_columns.items():
            message = formats.ignored_column(fmt, column)
            if message:
                report.ignored_columns.append(source)
                log.warning(message.replace(f"column '{column}'", f"column '{source}'", 1), field=source)
    result.kind = kind
    report.usable_rows = sum(1 for n, _ in rows if n not in log.bad_rows or log.bad_rows[n] is not None)


def _placeholders(data: dict, read: tuple[str, ...], row: int, log: IssueLog) -> None:
    """Warn about template placeholders such as {{name}} left in the text a format reads (not tool schemas)."""
    def walk(value, where):
        if isinstance(value, str):
            found = PLACEHOLDER.search(value) if "{{" in value else None
            if found:
                log.warning(f"the text holds the unfilled template placeholder {found.group(0)[:40]}, which the "
                            "model would learn literally; fill it in or remove it", row, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    for column in read:
        if column != "tools" and column in data:
            walk(data[column], column)


def finish(result: Scan, stage: str | None = None, tokenizer=None, max_length: int = DEFAULT_MAX_LENGTH,
           eval_fraction: float = DEFAULT_EVAL_FRACTION) -> ValidationReport:
    """Stage compatibility, size checks, token lengths and stats: completes result.report."""
    report, log, kind = result.report, result.log, result.kind
    if stage is not None and stage not in Stage.values():
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(Stage.values())}")
    stage = None if stage is None else str(stage)      # a Stage member too: the report holds plain strings
    report.stage, report.max_length, report.eval_fraction = stage, max_length, eval_fraction
    target = stage or (kind.natural_stage.value if kind else None)
    if kind:
        _stats(result)
        if tokenizer is not None and report.tool_call_rows:
            from backend.models.templates import uses_tool_format
            report.tool_format = "hermes" if uses_tool_format(tokenizer) else "template"
        if stage and formats.incompatibility(kind, report.format, stage):
            log.error(formats.incompatibility(kind, report.format, stage), stages=(stage,))
            report.token_note = (f"token lengths are not measured: {formats.format_label(report.format)} data "
                                 f"cannot feed {stage.upper()} (see the errors)")
        if target and formats.incompatibility(kind, report.format, target) is None:
            if not 0 <= eval_fraction < 1:
                log.error(f"eval_fraction must be between 0 and 1, got {eval_fraction}; use e.g. 0.1",
                          stages=(target,))
            n = result.count_stage_rows(target)
            train, held = split_sizes(n, eval_fraction if 0 <= eval_fraction < 1 else 0)
            report.split = {"stage": target, "train": train, "eval": held}
            if kind == Kind.TEXT:
                # documents are packed into blocks: the split and its minimum are counted in blocks (with a
                # tokenizer, _text_checks); one long document is a training set
                report.split = None
                if n == 0:
                    log.error("no usable document; every document has an error (see above)", stages=(target,))
            elif n < MIN_ROWS:
                log.error(f"only {n} usable rows for {target.upper()}; at least {MIN_ROWS} are needed to train, "
                          "so add rows or fix the errors", stages=(target,))
            elif eval_fraction > 0 and held == 0:
                log.error(f"eval_fraction {eval_fraction} of {n} rows is less than one row, so the eval split "
                          "would be empty; add rows, raise eval_fraction or set it to 0", stages=(target,))
            elif train < MIN_ROWS:
                log.error(f"holding out {held} of {n} rows for evaluation (eval_fraction {eval_fraction}) "
                          f"leaves {train} to train on, under the minimum of {MIN_ROWS}; add rows or set "
                          "eval_fraction to 0", stages=(target,))
            if tokenizer is not None and kind == Kind.TEXT:
                _text_checks(result, tokenizer, target, max_length, eval_fraction)
            elif tokenizer is not None:
                _token_checks(result, tokenizer, target, max_length)
    elif stage and not log.groups("error"):
        log.error("the dataset format could not be detected")
    if kind is None and report.rows:
        report.token_note = "token lengths are not measured: the format could not be detected (see the errors)"
    file_error = next((g for g in log.groups("error") if g.row is None and g.stages is None), None)
    for name in Stage.values():
        report.stages[name] = _compat(result, name, file_error)
    report.errors = log.groups("error")
    report.warnings = log.groups("warning")
    return report


def _compat(result: Scan, stage: str, file_error) -> StageCompat:
    report, log, kind = result.report, result.log, result.kind
    name = report.path and Path(report.path).name
    if file_error is not None or kind is None:
        reason = file_error.sentence(name) if file_error else "the dataset format could not be detected"
        return StageCompat(False, 0, reason)
    reason = formats.incompatibility(kind, report.format, stage)
    if reason:
        return StageCompat(False, 0, reason)
    n = result.count_stage_rows(stage)
    minimum = 1 if kind == Kind.TEXT else MIN_ROWS      # raw text: documents are packed, blocks are counted
    errors = [g for g in log.groups("error") if g.applies_to(stage)]
    if errors:
        first = errors[0].sentence(name)
        kinds = len(errors) - 1
        more = f" ({kinds} more kind{'s' if kinds > 1 else ''} of problem in the report)" if kinds else ""
        return StageCompat(False, n, first + more)
    if n < minimum:
        return StageCompat(False, n, f"only {n} usable rows for {stage.upper()}; at least {minimum} are needed")
    note = None
    if kind == Kind.PREFERENCE and stage == Stage.SFT:
        note = "SFT trains on the chosen answers; rejected answers are ignored"
    elif kind == Kind.KTO and stage == Stage.SFT:
        bad = (report.label_balance or {}).get("undesirable", 0)
        note = (f"SFT trains on the {n} rows labelled true only; the {bad} labelled false (bad answers) are left "
                "out")
    elif kind == Kind.PREFERENCE and stage == Stage.KTO:
        note = "each pair becomes two KTO rows: chosen labelled true, rejected labelled false"
    return StageCompat(True, n, note)


def _percentile(sorted_values: list[int], q: float) -> int:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _token_checks(result: Scan, tokenizer, stage: str, max_length: int) -> None:
    from backend.data.tokens import measure_rows

    log = result.log
    numbered = result.stage_rows_numbered(stage)
    measured = measure_rows([r for _, r in numbered], tokenizer, stage, max_length)
    lengths, over, lost = [], 0, 0
    for (number, _), m in zip(numbered, measured):
        if m["error"]:
            log.error(m["error"], number, stages=(stage,))
            continue
        lengths.append(m["length"])
        if m["lost"]:
            # the trainer skips such rows (and counts them); training still works if enough rows remain
            lost += 1
            log.warning(f"the prompt alone fills max_length={max_length} tokens, so the whole answer is cut off "
                        "and the trainer skips the row; raise max_length or shorten the prompt", number,
                        stages=(stage,))
        elif m["length"] > max_length:
            over += 1
            log.warning(f"longer than max_length={max_length} tokens after the chat template, so the end of the "
                        "answer is cut off; raise max_length or shorten the row", number, stages=(stage,))
    kept = len(lengths) - lost
    if lost and kept < MIN_ROWS:
        log.error(f"only {kept} rows keep part of their answer within max_length={max_length} tokens ({lost} lose "
                  f"it whole), under the minimum of {MIN_ROWS}; raise max_length or shorten the prompts",
                  stages=(stage,))
    if not lengths:
        result.report.token_note = (f"token lengths are not measured: no {stage.upper()} row could be rendered "
                                    "through the chat template (see the errors)" if numbered else
                                    f"token lengths are not measured: no row is usable for {stage.upper()} "
                                    "(see the errors)")
    if lengths:
        lengths.sort()
        result.report.token_lengths = {"stage": stage, "min": lengths[0], "median": int(statistics.median(lengths)),
                                       "p95": _percentile(lengths, 0.95), "max": lengths[-1]}
        result.report.length_values = lengths
    result.report.over_max_length = {"max_length": max_length, "rows": over + lost, "answer_lost": lost}


MIN_BLOCKS = 2     # one block to train on and one to hold out, at the least


def _text_checks(result: Scan, tokenizer, stage: str, max_length: int, eval_fraction: float) -> None:
    """Raw text: documents, tokens, blocks of max_length and the longest documents; too few blocks is an error."""
    from backend.data.packing import text_stats

    rows = [(n, canon) for n, canon in result.rows if result.log.row_ok(n, stage)]
    stats = result.report.text_stats = text_stats(rows, tokenizer, max_length)
    blocks = stats["blocks"]
    train, held = split_sizes(blocks, eval_fraction if 0 <= eval_fraction < 1 else 0)
    result.report.split = {"stage": stage, "train": train, "eval": held, "unit": "blocks"}
    if rows and blocks < MIN_BLOCKS:
        result.log.error(f"the {stats['documents']} documents hold {stats['tokens']} tokens, fewer than "
                         f"{MIN_BLOCKS} blocks of max_length={max_length}; add text or lower max_length",
                         stages=(stage,))
    elif rows and eval_fraction > 0 and held == 0:
        result.log.error(f"eval_fraction {eval_fraction} of {blocks} blocks is less than one block, so the eval "
                         "split would be empty; add text, lower max_length, raise eval_fraction or set it to 0",
                         stages=(stage,))


def _stats(result: Scan) -> None:
    report, kind = result.report, result.kind
    if kind == Kind.TEXT:
        return      # documents have no turns; their numbers come with a tokenizer (_text_checks)
    counts = []
    desirable = undesirable = 0
    shapes = {"with": 0, "empty": 0, "without": 0}
    calling = 0
    for _, canon in result.rows:
        reasoning, calls = toolcalls.row_shape(canon)
        shapes[reasoning] += 1
        calling += calls
        if kind == Kind.CHAT:
            counts.append(len(canon["messages"]))
        elif kind == Kind.PREFERENCE:
            counts.append(len(canon["prompt"]) + 1)
        else:
            counts.append(len(canon["prompt"]) + len(canon["completion"]))
            if canon["label"]:
                desirable += 1
            else:
                undesirable += 1
    if counts:
        report.turns = {"min": min(counts), "mean": round(sum(counts) / len(counts), 2), "max": max(counts)}
    if shapes["with"] or shapes["empty"]:
        report.reasoning = shapes
        _mixed_reasoning(result.log, shapes)
    if calling:
        report.tool_call_rows = calling
    if kind == Kind.KTO:
        report.label_balance = {"desirable": desirable, "undesirable": undesirable}
        total = desirable + undesirable
        if total and min(desirable, undesirable) / total < 0.1:
            result.log.warning(f"labels are unbalanced ({desirable} true, {undesirable} false); KTO works best "
                               "with both kinds, or adjust desirable/undesirable weights", stages=(Stage.KTO,))


def _mixed_reasoning(log: IssueLog, shapes: dict) -> None:
    """A warning when some answers reason and others do not: the model learns that reasoning is optional."""
    total = sum(shapes.values())
    if not shapes["with"] or shapes["with"] == total:
        return
    others = []
    if shapes["without"]:
        others.append(f"{shapes['without']} answer without one")
    if shapes["empty"]:
        others.append(f"{shapes['empty']} with an empty one")
    log.warning(f"{shapes['with']} of {total} rows answer with a <think> section but {' and '.join(others)}, "
                "which teaches the model that reasoning is optional, so it may start skipping it; give every row "
                "its reasoning, or remove the sections from all rows and train with the template's thinking "
                "switch off")
