"""`lorastudio export JOB_ID [--merge] [--dtype D] [--gguf TYPE] [--lora-gguf] [--out FILE]`: the adapter (default),
the merged model, a GGUF file of it (TYPE q4_k_m | q5_k_m | q6_k | q8_0 | f16), or the adapter as a llama.cpp LoRA
GGUF next to its base model's GGUF, verified and zipped under exports/<job_id>/; --out also copies the result
there (the zip, or with --gguf the .gguf file itself)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="zip a job's adapter, or its merged model with --merge")
    parser.add_argument("job_id")
    parser.add_argument("--merge", action="store_true",
                        help="merge the adapter into a full-precision base and export the whole model")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the merged weights (auto = the base model's own)")
    parser.add_argument("--gguf", choices=["q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"],
                        help="write the merged model as one GGUF file (llama.cpp / Ollama / LM Studio), checked in "
                             "llama.cpp before it is offered; the k-quants are made by llama.cpp's quantiser")
    parser.add_argument("--lora-gguf", action="store_true",
                        help="the adapter as a llama.cpp LoRA GGUF (llama-cli --lora, Ollama ADAPTER) with its base "
                             "model as an F16 GGUF and a Modelfile, checked in llama.cpp against the adapter")
    parser.add_argument("--out", help="also copy the finished file here (FILE.zip, or FILE.gguf with --gguf)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args) -> int:
    import logging

    from backend import export

    logging.getLogger("transformers").setLevel(logging.ERROR)
    kind = "gguf" if args.gguf else "lora-gguf" if args.lora_gguf else ("merged" if args.merge else "adapter")
    bar = _Bar(enabled=not args.json)
    try:
        result = export.export_job(args.job_id, kind, args.dtype, progress=bar, qtype=args.gguf or "f16")
    finally:
        bar.close()
    final = result.zip_path
    if kind == "gguf" and args.out:
        final = next(result.folder.glob("*.gguf"))
    if args.out:
        out = Path(args.out).expanduser()
        if out.is_dir():
            out = out / final.name
        partial = out.with_name(f".{out.name}.partial")
        shutil.copyfile(final, partial)
        partial.replace(out)
        final = out
    if args.json:
        print(json.dumps({"job_id": result.job_id, "kind": kind, "zip": str(final), "folder": str(result.folder),
                          "seconds": result.seconds, "notes": result.notes,
                          "merge_verification": result.check.as_dict() if result.check else None,
                          "gguf_verification": result.gguf}))
    else:
        if result.check:
            print(f"merge check: {result.check.summary()}")
        if result.gguf:
            print(f"{'LoRA GGUF' if kind == 'lora-gguf' else 'GGUF'} check: {result.gguf['reason']}")
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(final)
    return 0


class _Bar:
    """A one-line progress bar on stderr: [#####-----] 50% text."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.last = ""

    def __call__(self, fraction: float, text: str) -> None:
        if not self.enabled:
            if text != self.last and not text.startswith("zipping"):
                print(f"{fraction:4.0%} {text}", file=sys.stderr, flush=True)
                self.last = text
            return
        filled = int(30 * fraction)
        print(f"\r[{'#' * filled}{'-' * (30 - filled)}] {fraction:4.0%} {text[:60]:<60}", end="",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)
