"""`lorastudio models list | import PATH`."""
from __future__ import annotations

import json
from dataclasses import asdict


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list or import base models")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="registered models: name, parameters, architecture, source, ready")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    listing.set_defaults(handler=run_list)
    importing = actions.add_parser("import", help="register a local HF folder or convert a .gguf file")
    importing.add_argument("path", help="a Hugging Face model folder or a .gguf file (e.g. from Ollama / LM Studio)")
    importing.add_argument("--name", help="registry name (default: from the folder or file name)")
    importing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    importing.set_defaults(handler=run_import)


def run_list(args) -> int:
    from backend import models

    infos = models.list_models()
    if args.json:
        print(json.dumps({"models": [asdict(info) for info in infos]}))
        return 0
    rows = [("NAME", "PARAMETERS", "ARCHITECTURE", "SOURCE", "READY")]
    for info in infos:
        rows.append((info.name, models.format_parameters(info.parameters), info.architecture or "?", info.source,
                     "yes" if info.ready else "no (converted on first use)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def run_import(args) -> int:
    from pathlib import Path

    from backend import models

    info = models.import_model(Path(args.path), name=args.name)
    if args.json:
        print(json.dumps(asdict(info)))
    else:
        print(f"imported {info.name}: {models.format_parameters(info.parameters)} parameters, {info.architecture}, "
              f"from {info.source}")
    return 0

