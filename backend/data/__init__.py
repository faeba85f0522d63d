"""Datasets: every common chat and preference format in, canonical rows and a precise report out.

Public API:
    validate(spec_or_path, stage=None, tokenizer=None, max_length=512, eval_fraction=0.1,
             column_mapping=None, *, format_name=None) -> ValidationReport
    load_for_stage(spec, stage, *, column_mapping=None, format_name=None, skip_invalid=False) -> LoadedDataset
    register_upload(path, name=None, column_mapping=None, format_name=None) -> dataset id
    ensure_demo_datasets() / list_datasets() / dataset_info(id) / delete_dataset(id)
    preview(...) / stats figures: see backend.data.preview and backend.data.stats
    FORMATS (name -> Format: label, kind, normaliser), Kind (chat / preference / kto and the stages each feeds),
    Problem (one finding of a normaliser, before it is grouped into the report's IssueGroups)
`spec` is a demo name, a registered dataset id (datasets/<id>/), the name it was saved under, or a file path
inside the allowed folders (see readers). Modules: readers (files), formats (shapes), validate (checks), report,
tokens, registry, preview, stats; render and demo belong to the training core.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.data.formats import FORMATS, Format, Kind
from backend.data.registry import (DataError, dataset_info, delete_dataset, display_name, ensure_demo_datasets,
                                   find_by_name, list_datasets, register_upload, resolve)
from backend.data.report import IssueGroup, Problem, StageCompat, ValidationReport
from backend.data.validate import (DEFAULT_EVAL_FRACTION, DEFAULT_MAX_LENGTH, MIN_ROWS, Scan, finish, scan,
                                   split_sizes)
from backend.vocab import Stage

__all__ = ["DataError", "LoadedDataset", "ValidationReport", "IssueGroup", "StageCompat", "Problem", "FORMATS",
           "Format", "Kind", "MIN_ROWS", "validate", "load_for_stage", "register_upload", "ensure_demo_datasets",
           "list_datasets", "dataset_info", "delete_dataset", "display_name", "find_by_name", "split_sizes",
           "scan_spec"]


@dataclass
class LoadedDataset:
    id: str
    path: Path
    content_hash: str
    rows: list[dict] = field(default_factory=list)   # canonical rows for the stage
    format: str | None = None
    skipped_rows: int = 0                            # rows with errors left out (skip_invalid=True only)
    report: ValidationReport | None = None


def scan_spec(spec, column_mapping=None, format_name=None) -> tuple[str, Scan, dict | None]:
    """Resolve and read a dataset: (id, scan, registry meta or None). Raises DataError for unknown names."""
    dataset_id, path, meta = resolve(str(spec))
    return dataset_id, scan(path, column_mapping, format_name), meta


def validate(spec_or_path, stage: str | None = None, tokenizer=None, max_length: int = DEFAULT_MAX_LENGTH,
             eval_fraction: float = DEFAULT_EVAL_FRACTION, column_mapping: dict | None = None, *,
             format_name: str | None = None) -> ValidationReport:
    """The full report; never raises for bad data (every problem is in the report)."""
    try:
        _, result, _ = scan_spec(spec_or_path, column_mapping, format_name)
    except DataError as exc:
        report = ValidationReport(path=str(spec_or_path), format=None, stage=None if stage is None else str(stage))
        report.errors = [IssueGroup("error", str(exc), count=1)]
        report.stages = {s: StageCompat(False, 0, str(exc)) for s in Stage.values()}
        return report
    return finish(result, stage, tokenizer, max_length, eval_fraction)


def load_for_stage(spec: str, stage: str, *, column_mapping: dict | None = None, format_name: str | None = None,
                   skip_invalid: bool = False, eval_fraction: float = 0.0) -> LoadedDataset:
    """Canonical rows of a dataset for one stage, or DataError (one sentence) when it cannot be used.

    sft rows: {"messages", "tools"?}; dpo / orpo: {"prompt", "chosen", "rejected"} (message lists);
    kto: {"prompt", "completion", "label"}. With skip_invalid=True rows with errors are left out (counted in
    skipped_rows) instead of blocking the stage. eval_fraction: the split the trainer will make (checked so
    that enough rows remain to train on; split with validate.split_sizes).
    """
    if stage not in Stage.values():
        raise DataError(f"unknown stage '{stage}'; use one of {', '.join(Stage.values())}")
    dataset_id, result, meta = scan_spec(spec, column_mapping, format_name)
    report = finish(result, stage, eval_fraction=eval_fraction)
    compat = report.stages[stage]
    name = Path(report.path).name if report.path else dataset_id
    if meta and meta.get("invalid_rows") and not skip_invalid:
        raise DataError(f"dataset {dataset_id} had {meta['invalid_rows']} rows with errors when it was uploaded "
                        "(see its report); fix the file and upload it again, or choose to skip invalid rows")
    if not compat.usable:
        blocking = [g for g in report.errors_for(stage) if g.row is None]
        enough = compat.rows >= MIN_ROWS and not blocking
        if not (skip_invalid and enough and result.kind):
            reason = compat.reason or "it is not usable"
            raise DataError(reason if reason.startswith(f"{name}") else f"{name}: {reason}")
    rows = result.stage_rows(stage, skip_invalid=True)
    skipped = sum(1 for n in result.log.bad_rows if not result.log.row_ok(n, stage))
    return LoadedDataset(id=dataset_id, path=Path(result.report.path), content_hash=report.content_hash or "",
                         rows=rows, format=report.format, skipped_rows=skipped, report=report)
