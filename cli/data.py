"""`lorastudio data check FILE [--stage S] [--model M] [--max-length N] [--eval-fraction F] [--json]`.

Exit 0 when the dataset is usable for the stage (for at least one stage when none is given), 1 when not.
Without --model, token lengths are checked with the bundled model only if it is already converted.
"""
from __future__ import annotations

import contextlib
import json
import sys

from backend.vocab import Stage

STAGE_CHOICES = Stage.values()
DEFAULT_MAX_LENGTH = 512
DEFAULT_EVAL_FRACTION = 0.1
SHOWN_PROBLEMS = 20            # text output lists this many error / warning groups


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check datasets")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate a dataset file and report every problem")
    check.add_argument("file", help="a .jsonl/.json/.csv/.parquet file, a saved-dataset folder, a demo name or "
                                    "a registered dataset id")
    check.add_argument("--stage", choices=STAGE_CHOICES, help="the stage the data is for (default: any)")
    check.add_argument("--model", help="model whose chat template measures token lengths (default: the bundled "
                                       "model when it is ready)")
    check.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="training max_length in tokens")
    check.add_argument("--eval-fraction", type=float, default=DEFAULT_EVAL_FRACTION,
                       help="share of rows held out for evaluation")
    check.add_argument("--json", action="store_true", help="one JSON object on stdout")
    check.set_defaults(handler=run)


def _tokenizer(model: str | None):
    """The tokenizer for token-length checks, or None (quietly) when no model is given and none is ready."""
    from backend import models

    if model:
        return models.load_tokenizer(model)
    try:
        bundled = next((m for m in models.list_models() if m.name == models.BUNDLED_MODEL), None)
        return models.load_tokenizer(models.BUNDLED_MODEL) if bundled and bundled.ready else None
    except Exception:  # noqa: BLE001 - length checks are optional without --model
        return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run(args) -> int:
    from backend import data

    try:
        # model conversion prints progress: keep stdout for the report (one JSON object with --json)
        with contextlib.redirect_stdout(sys.stderr):
            tokenizer = _tokenizer(getattr(args, "model", None))
        report = data.validate(args.file, stage=args.stage, tokenizer=tokenizer,
                               max_length=getattr(args, "max_length", DEFAULT_MAX_LENGTH),
                               eval_fraction=getattr(args, "eval_fraction", DEFAULT_EVAL_FRACTION))
    except Exception as error:  # noqa: BLE001 - one sentence, never a traceback
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(format_report(report))
    if not report.ok:
        problem = report.first_problem(args.stage) or "the dataset is not usable for any stage"
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


def format_report(report) -> str:
    """The report as a few readable lines."""
    from backend.data.formats import format_label

    name = report.path
    lines = [f"{name}: {format_label(report.format, 'unknown format')}, {report.rows} rows read, "
             f"{report.usable_rows} usable"]
    for stage, compat in report.stages.items():
        mark = "ok " if compat.usable else "no "
        detail = f" ({compat.reason})" if compat.reason else ""
        lines.append(f"  {mark}{stage.upper()}: {compat.rows} rows{detail}")
    if report.token_lengths:
        t = report.token_lengths
        over = report.over_max_length or {}
        lines.append(f"  tokens: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; "
                     f"{over.get('rows', 0)} over max_length {report.max_length} "
                     f"({over.get('answer_lost', 0)} would lose the whole answer)")
    file_name = name.rsplit("/", 1)[-1] if name else None
    for label, groups in (("error", report.errors), ("warning", report.warnings)):
        for group in groups[:SHOWN_PROBLEMS]:
            lines.append(f"  {label}: {group.sentence(file_name)}")
        if len(groups) > SHOWN_PROBLEMS:
            lines.append(f"  ... {len(groups) - SHOWN_PROBLEMS} more {label} kinds (use --json for all)")
    return "\n".join(lines)
