"""`lorastudio adapters list | show ID | import FOLDER | compose ID ID ... | note ID | delete ID`: the adapter
registry (backend/adapters)."""
from __future__ import annotations

import json
from dataclasses import asdict


def add_parser(subparsers) -> None:
    from backend.adapters import ORIGINS
    from backend.adapters.compose import COMBINATIONS

    parser = subparsers.add_parser("adapters", help="the adapter registry: list, show, import, compose, delete")
    actions = parser.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="every adapter: trained, imported or composed, newest first")
    for name in ("base", "method", "stage", "tag"):
        listing.add_argument(f"--{name}", help=f"only adapters with this {name}")
    listing.add_argument("--origin", choices=ORIGINS, help="only trained, imported or composed adapters")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one adapter's provenance: base, data, settings, results, lineage")
    show.add_argument("adapter", help="an adapter (job) id")
    show.add_argument("--json", action="store_true", help="one JSON object on stdout")
    show.set_defaults(handler=run_show)

    importing = actions.add_parser("import", help="a peft adapter folder trained elsewhere, checked on its base")
    importing.add_argument("folder", help="the folder holding adapter_config.json and adapter_model.safetensors")
    importing.add_argument("--base", help="its base model (default: the one its adapter_config.json names)")
    importing.add_argument("--name", default="", help="a label in lists")
    importing.set_defaults(handler=run_import)

    compose = actions.add_parser("compose", help="combine adapters of one base into a new one (peft's "
                                                 "add_weighted_adapter), without training")
    compose.add_argument("adapters", nargs="+", help="two or more adapter ids")
    compose.add_argument("--weights", nargs="+", type=float, help="one weight per adapter (default: 1 / count)")
    compose.add_argument("--type", dest="combination", default="linear", choices=list(COMBINATIONS),
                         help="how to combine (default linear; cat and svd take different ranks)")
    compose.add_argument("--density", type=float, help="share of each update kept (ties, dare_*, magnitude_prune; "
                                                       "default 0.5)")
    compose.add_argument("--seed", type=int, default=0, help="DARE's random drop (default 0)")
    compose.add_argument("--name", default="", help="a label in lists")
    compose.set_defaults(handler=run_compose)

    note = actions.add_parser("note", help="set an adapter's note and tags")
    note.add_argument("adapter")
    note.add_argument("--note", help="free text")
    note.add_argument("--tags", help="comma-separated tags, e.g. math,v2 (replaces the old ones)")
    note.set_defaults(handler=run_note)

    delete = actions.add_parser("delete", help="delete an adapter (its job, run folder and exports)")
    delete.add_argument("adapter")
    delete.add_argument("--force", action="store_true", help="also when compositions or chained jobs came from it")
    delete.set_defaults(handler=run_delete)


def run_list(args) -> int:
    from backend import adapters

    found = adapters.entries(base=args.base, method=args.method, stage=args.stage, tag=args.tag, origin=args.origin)
    if args.json:
        print(json.dumps({"adapters": [_plain(e) for e in found]}))
        return 0
    rows = [("ID", "ORIGIN", "BASE", "METHOD", "STAGE", "RANK", "SIZE", "NAME / TAGS")]
    for e in found:
        rows.append((e.id, e.origin, e.base, e.method, e.stage, str(e.rank or "?"), adapters.size_text(e.size_bytes),
                     " ".join([e.name, *(f"#{t}" for t in e.tags)]).strip()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def run_show(args) -> int:
    from backend import adapters

    entry = adapters.get(args.adapter)
    if args.json:
        print(json.dumps(_plain(entry)))
        return 0
    print(adapters.describe(entry))
    return 0


def run_import(args) -> int:
    from backend.adapters.importer import import_adapter

    entry = import_adapter(args.folder, base=args.base, name=args.name)
    print(f"imported {entry.id}: {entry.method} rank {entry.rank} on {entry.base}")
    return 0


def run_compose(args) -> int:
    from backend.adapters.compose import Composition, compose

    weights = tuple(args.weights) if args.weights else tuple(1 / len(args.adapters) for _ in args.adapters)
    entry = compose(Composition(parents=tuple(args.adapters), weights=weights, combination=args.combination,
                                density=args.density, name=args.name, seed=args.seed),
                    progress=lambda fraction, text: print(f"[{fraction:4.0%}] {text}", flush=True))
    print(f"composed {entry.id}: {args.combination} of {', '.join(args.adapters)}, rank {entry.rank}")
    return 0


def run_note(args) -> int:
    from backend import adapters

    tags = [t for t in args.tags.split(",")] if args.tags is not None else None
    entry = adapters.annotate(args.adapter, note=args.note, tags=tags)
    print(f"{entry.id}: note '{entry.note}', tags {', '.join(entry.tags) or 'none'}")
    return 0


def run_delete(args) -> int:
    import sys

    from backend import adapters
    from workers import control

    adapters.get(args.adapter)
    problem = adapters.delete_problem(args.adapter)
    if problem and not args.force:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    control.delete_job(args.adapter)
    print(f"deleted {args.adapter}")
    return 0


def _plain(entry) -> dict:
    data = asdict(entry)
    data["path"] = str(entry.path)
    data["tags"] = list(entry.tags)
    return data
