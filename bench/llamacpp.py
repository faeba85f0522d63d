"""GGUF in llama.cpp: per type, the file size, the time to make it, what llama.cpp's quantiser actually wrote,
the export's own llama.cpp check, top-1 agreement with the float model, and generation speed against the
transformers model it came from.

    python -m bench llamacpp [--model smollm2-135m-instruct | --model FOLDER] [--prompts 8] [--new-tokens 64]
                             [--types f16,q8_0,q6_k,q5_k_m,q4_k_m]

F16 and Q8_0 are written by backend.export.gguf; Q6_K, Q5_K_M and Q4_K_M by llama.cpp's quantiser from the F16
file (backend.export.llamacpp.quantize), as the export does. Top-1 agreement: teacher-forced on the float32
model's own greedy answers to PROMPTS, the share of answer positions where llama.cpp's top token is the float
model's. Speed: greedy generation of --new-tokens tokens to one prompt (ignoring end of text), llama.cpp vs
transformers float32 on the same threads, side by side in one run; each timed twice, the faster kept.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_line, markdown_table, scratch_workspace

PROMPTS = ["Who are you?", "What is the capital of Italy?", "Write one sentence about the sea.",
           "List three fruits.", "Explain what a GPU is in one sentence.", "What is 17 + 25?",
           "Translate 'good morning' to French.", "Give me a name for a cat."]
TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")
MB = 1024 * 1024


def make(model_dir: Path, folder: Path, qtype: str) -> tuple[Path, float]:
    from backend.export import llamacpp
    from backend.export.gguf import write_gguf

    out = folder / f"model-{qtype}.gguf"
    started = time.perf_counter()
    if qtype in ("f16", "q8_0"):
        write_gguf(model_dir, out, qtype)
    else:
        llamacpp.quantize(folder / "model-f16.gguf", out, qtype)
    return out, time.perf_counter() - started


def tensor_types(path: Path) -> str:
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for tensor in GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return " ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda item: -item[1]))


def reference_answers(model_dir: Path, prompts: list[str], new_tokens: int):
    """[(prompt ids, the float model's greedy answer ids)] from transformers float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.export.gguf import _chat_ids, _greedy, _greedy_config

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generation = _greedy_config(model, tokenizer, new_tokens)
    pairs = []
    for prompt in prompts:
        ids = _chat_ids(tokenizer, prompt)
        pairs.append((ids.tolist(), _greedy(model, ids, generation).tolist()))
    del model
    gc.collect()
    return pairs


def top1_agreement(path: Path, pairs) -> tuple[float, int]:
    from backend.export import llamacpp

    agree = positions = 0
    for ids, answer in pairs:
        if not answer:
            continue
        choices = llamacpp.next_token_choices(path, ids + answer)[len(ids) - 1: len(ids) - 1 + len(answer)]
        agree += sum(int(a == b) for a, b in zip(choices, answer))
        positions += len(answer)
    return (agree / positions if positions else float("nan")), positions


def llamacpp_speed(path: Path, prompt_ids: list[int], new_tokens: int) -> float:
    """Tokens per second of llama.cpp's greedy decoding (prompt processing included, as a user waits for it)."""
    from backend.export import llamacpp

    best = float("inf")
    with llamacpp._loaded(path, n_ctx=llamacpp._context_size(len(prompt_ids) + new_tokens)) as llm:
        for _ in range(2):
            started = time.perf_counter()
            made = 0
            for _token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True):
                made += 1
                if made >= new_tokens:
                    break
            best = min(best, time.perf_counter() - started)
    return new_tokens / best


def transformers_speed(model_dir: Path, prompt_ids: list[int], new_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from backend.export import llamacpp

    torch.set_num_threads(llamacpp.thread_count())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([prompt_ids])
    best = float("inf")
    with torch.no_grad():
        for _ in range(2):
            started = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0)
            best = min(best, time.perf_counter() - started)
    del model
    gc.collect()
    return new_tokens / best


def main(argv=None) -> str:
    from backend.export import llamacpp, llamacpp_check

    args = _parser().parse_args(argv)
    if not llamacpp.available():
        text = f"### GGUF in llama.cpp\n\nNot run: {llamacpp.LlamaCppMissing()}.\n"
        print(text)
        return text
    prompts = PROMPTS[: args.prompts]
    with scratch_workspace(), tempfile.TemporaryDirectory(prefix="llamacpp-bench-") as scratch:
        from bench.gguf import _model_dir

        model_dir = _model_dir(args.model)
        pairs = reference_answers(model_dir, prompts, args.new_tokens)
        rows, files = [], {}
        types = [t for t in TYPES if t == "f16" or t in args.types.split(",")]
        for qtype in types:
            path, seconds = make(model_dir, Path(scratch), qtype)
            files[qtype] = path
            agreement, positions = top1_agreement(path, pairs)
            check = llamacpp_check.verify(path, model_dir, prompts[:3])
            clear = (f", top-1 {100 * check['top1_agreement']:.0f} % of {check['clear']} clear"
                     if check.get("top1_agreement") is not None else "")
            verdict = (f"passed ({check['disagreements']} disagreements, {check['near_ties']} near-ties "
                       f"of {check['positions']}{clear})" if check["ok"] else f"failed: {check['reason']}")
            rows.append([qtype.upper(), f"{path.stat().st_size / MB:.1f}", f"{seconds:.1f}", tensor_types(path),
                         f"{100 * agreement:.1f} % of {positions}",
                         f"{sum(check['answers_match'])}/{len(check['answers_match'])}", verdict])
        prompt_ids = pairs[0][0]
        reference_speed = transformers_speed(model_dir, prompt_ids, args.new_tokens)
        speeds = [["transformers float32 (merged model folder)", f"{reference_speed:.1f}"]]
        for qtype in [t for t in ("f16", "q8_0", "q4_k_m") if t in files]:
            speeds.append([f"llama.cpp {qtype.upper()}",
                           f"{llamacpp_speed(files[qtype], prompt_ids, args.new_tokens):.1f}"])
    base = float(speeds[0][1])
    for row in speeds:
        row.append(f"{float(row[1]) / base:.2f}x")
    text = "\n".join([
        f"### GGUF in llama.cpp ({args.model}; llama-cpp-python {_version()}, {llamacpp.thread_count()} threads)",
        "", machine_line(), "",
        markdown_table(["type", "file MB", "made in s", "tensor types llama.cpp wrote", "top-1 agreement",
                        "greedy equal (check prompts)", "export check in llama.cpp"], rows), "",
        f"Generation speed, greedy, {args.new_tokens} new tokens to {prompts[0]!r}:", "",
        markdown_table(["engine", "tokens/s", "vs transformers"], speeds), ""])
    print(text)
    return text


def _version() -> str:
    from importlib.metadata import version
    return version("llama_cpp_python")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or model folder")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--types", default=",".join(TYPES), help="which GGUF types (F16 is always made: the "
                                                                     "k-quants are quantised from it)")
    return parser


if __name__ == "__main__":
    main(sys.argv[1:])
