"""`lorastudio chat JOB_ID --prompt TEXT [--json]`: the base, adapter and merged answers side by side.

Same conversation, chat template, decoding settings and seed in every column; greedy by default. --json prints
one object with the keys base, adapter, merged, max_logit_diff (and the merge verification facts).
"""
from __future__ import annotations

import json
import sys


def add_parser(subparsers) -> None:
    from backend.serve.chat import GenerationSettings

    parser = subparsers.add_parser("chat", help="answer a prompt with base / adapter / merged side by side")
    parser.add_argument("job_id")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--compare", metavar="JOB_ID", help="put this job's adapter next to JOB_ID's instead")
    defaults = GenerationSettings()
    for name, kind in (("system_prompt", str), ("max_new_tokens", int), ("temperature", float), ("top_p", float),
                       ("repetition_penalty", float), ("seed", int)):
        field = GenerationSettings.__dataclass_fields__[name]
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=getattr(defaults, name),
                            help=f"{field.metadata['help']} (default {getattr(defaults, name)!r})")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import logging

    from backend.serve import playground
    from backend.serve.chat import GenerationSettings

    logging.getLogger("transformers").setLevel(logging.ERROR)
    settings = GenerationSettings(system_prompt=args.system_prompt, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty, seed=args.seed)
    if settings.problems():
        print("error: " + "; ".join(settings.problems()), file=sys.stderr)
        return 2
    session = playground.open_session(args.job_id, args.compare)
    messages = [{"role": "user", "content": args.prompt}]
    answers = {}
    for column in session.columns:
        if not args.json:
            print(f"--- {column.title}", flush=True)
        printed = 0
        stats = None
        for stats in session.stream(column.key, messages, settings):
            if not args.json and not stats.done:   # stream tokens as they arrive
                print(stats.text[printed:], end="", flush=True)
                printed = len(stats.text)
        answers[column.key] = stats
        if not args.json:
            print(f"\n    [{stats.summary()}]", flush=True)
    check = session.check
    if args.json:
        out = {key: stats.text for key, stats in answers.items()}
        out["max_logit_diff"] = check.max_logit_diff if check else None
        out["merge_verification"] = check.as_dict() if check else None
        out["stats"] = {key: {"tokens": s.tokens, "first_token_s": s.first_token_s,
                              "tokens_per_second": s.tokens_per_second} for key, s in answers.items()}
        print(json.dumps(out))
    elif check:
        print(f"merge check: {check.summary()}")
    for note in session.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
