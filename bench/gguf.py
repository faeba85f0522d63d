"""GGUF export benchmark: time, file size and peak memory of `write_gguf` for F16 and Q8_0, against the size
of the safetensors weights.

    python -m bench.gguf [--model smollm2-135m-instruct | --model FOLDER] [--rounds 2] [--verify]

Each export runs in a fresh subprocess: its resident memory after the imports is the baseline, the kernel's
peak counter (VmHWM) is reset there, and the increase during the write is reported. The target is about one
copy of the weights or less (tensors are read, converted and written one by one), not several.
`--verify` adds the round-trip figures (greedy answers equal, max |logit diff|) from `verify_gguf`.
A test runs it on a tiny model folder in seconds (`--model FOLDER --rounds 1`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine_line, markdown_table, median, scratch_workspace

PROMPTS = ["Who are you?", "What is the capital of Italy?", "Write one sentence about the sea."]
MB = 1024 * 1024


def child(model_dir: str, out_path: str, qtype: str) -> None:
    """Runs in the subprocess: imports first, then the baseline, then one export; prints one JSON line."""
    import gguf  # noqa: F401 - imported before the baseline, like everything write_gguf needs
    import safetensors  # noqa: F401
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoConfig

    from backend.export.gguf import write_gguf

    AutoConfig.from_pretrained(model_dir)   # imports ~900 transformers modules (~85 MB), once per process
    baseline = _status_kb("VmRSS")
    reset = _reset_peak()
    facts = write_gguf(Path(model_dir), Path(out_path), qtype)
    peak = _status_kb("VmHWM") if reset else _ru_maxrss_kb()
    print(json.dumps({**facts, "baseline_mb": baseline / 1024, "peak_increase_mb": (peak - baseline) / 1024}))


def export_once(model_dir: Path, out_path: Path, qtype: str) -> dict:
    command = [sys.executable, "-m", "bench.gguf", "--child", str(model_dir), str(out_path), qtype]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])   # so `-m bench.gguf` imports
    if done.returncode != 0:
        raise RuntimeError(f"export subprocess failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> str:
    args = _parser().parse_args(argv)
    with scratch_workspace(), tempfile.TemporaryDirectory(prefix="gguf-bench-") as scratch:
        model_dir = _model_dir(args.model)
        weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        rows = []
        for qtype in ("f16", "q8_0"):
            out = Path(scratch) / f"model-{qtype}.gguf"
            runs = [export_once(model_dir, out, qtype) for _ in range(args.rounds)]
            increase = median([r["peak_increase_mb"] for r in runs])
            row = [qtype.upper(), median([r["seconds"] for r in runs]), runs[0]["bytes"] / MB, weights / MB,
                   increase, increase * MB / weights]
            if args.verify:
                from backend.export.gguf import verify_gguf
                check = verify_gguf(out, model_dir, PROMPTS)
                row += [f"{sum(check['answers_match'])}/{len(PROMPTS)}", check["max_logit_diff"],
                        "ok" if check["ok"] else f"failed: {check['reason']}"]
            rows.append(row)
    headers = ["GGUF type", "export s (median)", "file MB", "safetensors MB", "peak RSS increase MB",
               "increase / weights"]
    if args.verify:
        headers += ["greedy equal", "max logit diff", "verification"]
    text = (f"### GGUF export ({args.model}, {args.rounds} round(s), fresh process each)\n\n{machine_line()}\n\n"
            f"{markdown_table(headers, rows)}\n")
    print(text)
    return text


def _model_dir(model: str) -> Path:
    from backend import models

    if Path(model).is_dir():
        return Path(model)
    if model == "smollm2-135m-instruct":
        return Path(models.ensure_bundled_model().path)
    return Path(models.resolve(model).path)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return _ru_maxrss_kb()


def _reset_peak() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so the peak is the export's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _ru_maxrss_kb() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--verify", action="store_true", help="also load each file back and compare")
    parser.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "OUT", "QTYPE"), help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    arguments = _parser().parse_args()
    if arguments.child:
        child(*arguments.child)
    else:
        main(sys.argv[1:])
