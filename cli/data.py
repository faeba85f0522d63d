"""`lorastudio data check FILE [--stage S] [--model M] [--max-length N] [--eval-fraction F] [--json]`,
`lorastudio data register FILE [--name NAME]`, `lorastudio data replay [--model M]` and
`lorastudio data list [--json]`.

check: exit 0 when the dataset is usable for the stage (for at least one stage when none is given), 1 when not.
Without --model, token lengths are checked with the bundled model only if it is already converted.
register: the Data tab's "Save upload as dataset": validates and stores the file, prints its id (stdout, one
line); with --name the dataset is found by that name wherever an id is accepted. Exit 1 with one sentence when
the file is unusable or the name is taken.
replay: distils the base model's replay set (backend/data/replay.py) unless it is there; prints its id.
list: the saved datasets (demos first), one line each, or a JSON list of objects with --json.
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
    parser = subparsers.add_parser("data", help="check, save and list datasets")
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
    register = actions.add_parser("register", help="save a dataset file in the workspace (the Data tab's "
                                                   "'Save upload as dataset')")
    register.add_argument("file", help="a .jsonl/.json/.csv/.parquet file or a saved-dataset folder")
    register.add_argument("--name", help="a unique name to use instead of the id (in job configs, --set "
                                         "dataset=NAME, the Train tab)")
    register.add_argument("--mapping", help="column mapping as JSON, {canonical: column in the file}, e.g. "
                                            "'{\"prompt\": \"question\", \"completion\": \"answer\"}'")
    register.set_defaults(handler=run_register)
    replay = actions.add_parser("replay", help="distil the replay set of a base model (its own answers to varied "
                                               "prompts), which `mix: {replay: 0.1}` mixes into a job against "
                                               "forgetting; a job builds it on first use too")
    replay.add_argument("--model", default="smollm2-135m-instruct", help="the base model (default: the bundled one)")
    replay.add_argument("--chat-template", default=None, help="for a base model without a chat template: chatml, "
                                                              "llama3, alpaca or vicuna")
    replay.set_defaults(handler=run_replay)
    listing = actions.add_parser("list", help="list the saved datasets")
    listing.add_argument("--json", action="store_true", help="a JSON list on stdout")
    listing.set_defaults(handler=run_list)


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


LIST_KEYS = ("id", "name", "named", "demo", "format", "kind", "rows", "usable_rows", "invalid_rows", "stages",
             "content_hash", "file_size", "created_at")


def run_register(args) -> int:
    from backend import data

    try:
        mapping = json.loads(args.mapping) if getattr(args, "mapping", None) else None
        if mapping is not None and not (isinstance(mapping, dict)
                                        and all(isinstance(v, str) for v in mapping.values())):
            raise ValueError("--mapping must be a JSON object of canonical column -> column in the file")
        dataset_id = data.register_upload(args.file, name=getattr(args, "name", None), column_mapping=mapping)
        meta = data.dataset_info(dataset_id)
    except Exception as error:  # noqa: BLE001 - one sentence, never a traceback
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    shown = f"'{meta['name']}' " if meta.get("named") else ""
    print(f"saved dataset {shown}({dataset_id}): {meta.get('rows')} rows, {meta.get('kind')} data, usable for "
          f"{', '.join(s for s, ok in (meta.get('stages') or {}).items() if ok) or 'no stage'}", file=sys.stderr)
    print(dataset_id)
    return 0


def run_replay(args) -> int:
    from backend import data
    from backend.data.replay import ensure_replay

    def progress(done: int, total: int, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        with contextlib.redirect_stdout(sys.stderr):
            dataset_id = ensure_replay(args.model, args.chat_template, progress)
        meta = data.dataset_info(dataset_id)
    except Exception as error:  # noqa: BLE001 - one sentence, never a traceback
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    made = meta.get("replay", {})
    print(f"replay set '{meta['name']}' ({dataset_id}): {meta.get('rows')} answers of {made.get('model')} "
          f"({made.get('trimmed_answers', 0)} trimmed to their last full sentence, {made.get('left_out', 0)} left "
          "out); mix it into a job with --set mix.replay=0.1", file=sys.stderr)
    print(dataset_id)
    return 0


def run_list(args) -> int:
    from backend import data

    items = [{key: meta.get(key) for key in LIST_KEYS} for meta in data.list_datasets()]
    for item in items:
        item["named"] = bool(item["named"] or item["demo"])
    if getattr(args, "json", False):
        print(json.dumps(items, ensure_ascii=False))
        return 0
    if not items:
        print("no datasets yet; save one with: lorastudio data register FILE --name NAME")
        return 0
    for item in items:
        name = item["name"] if item["named"] else "-"
        stages = ",".join(s for s, ok in (item["stages"] or {}).items() if ok) or "none"
        print(f"{item['id']}  {name}  {item['rows']} rows  {item['kind']}  usable for {stages}"
              + ("  (demo)" if item["demo"] else ""))
    return 0
