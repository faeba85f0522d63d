"""`lorastudio eval JOB_ID [--compare JOB_B] [--json] ...`: the quality report, base vs adapter side by side.

Runs the ticked sections (held-out rows, forgetting, format checks by default; --benchmarks, --text and
--judge-url add the others), saves runs/<job_id>/eval.json and prints one line per metric, or with --json the
whole report as one JSON object on stdout. Progress with an ETA goes to stderr. Exit 0: the report was saved and
every section ran; 1: nothing could run (one sentence on stderr, the previous report kept) or a section was
skipped (its sentence on stderr, the rest saved).
"""
from __future__ import annotations

import json
import sys
from dataclasses import fields


def add_parser(subparsers) -> None:
    from backend.evaluate.report import EvalOptions

    parser = subparsers.add_parser("eval", help="the quality report: did the adapter get better, what did it forget")
    parser.add_argument("job_id")
    parser.add_argument("--compare", dest="compare_job", metavar="JOB_B", default="",
                        help=EvalOptions.__dataclass_fields__["compare_job"].metadata["help"])
    defaults = EvalOptions()
    for f in fields(EvalOptions):
        if f.name == "compare_job":
            continue
        flag = "--" + {"corpus_path": "text"}.get(f.name, f.name).replace("_", "-")
        if isinstance(f.default, bool):   # sections on by default: --no-task, --no-forgetting, --no-formats
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help="skip: " + f.metadata["help"])
        else:
            kind = type(f.default)
            parser.add_argument(flag, dest=f.name, type=kind, default=getattr(defaults, f.name),
                                metavar=f.name.upper(), help=f"{f.metadata['help']} (default {f.default!r})")
    parser.add_argument("--json", action="store_true", help="the whole report as one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import logging

    from backend.evaluate.report import EvalOptions, errors_of, report_path, run_report, summary_lines

    logging.getLogger("transformers").setLevel(logging.ERROR)
    options = EvalOptions(**{f.name: getattr(args, f.name) for f in fields(EvalOptions)})
    last = [-1]

    def progress(fraction: float, text: str) -> None:
        percent = int(fraction * 100)
        if percent != last[0]:
            last[0] = percent
            print(f"[{percent:3d}%] {text}", file=sys.stderr, flush=True)

    report = run_report(args.job_id, options, progress)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, default=str))
    else:
        print(f"quality report of {report['job_id']} ({report['adapter']}): saved in {report_path(report['job_id'])}")
        if report.get("caveat"):
            print(f"note: {report['caveat']}")
        for line in summary_lines(report):
            print("  " + line)
    errors = errors_of(report)
    for error in errors:
        print(f"skipped: {error}", file=sys.stderr)
    return 1 if errors else 0
