"""Export kind "lora-gguf": the job's adapter as a llama.cpp LoRA GGUF, next to its base model as an F16 GGUF
and a Modelfile that loads both (Ollama's FROM + ADAPTER; `llama-cli -m BASE --lora ADAPTER`), so the base is
downloaded once and adapters are swapped on it, in llama.cpp / Ollama too.

The adapter is converted by llama.cpp's own converter (backend/export/llamacpp_lora.py); the base GGUF is written
from the base model's weights with the tokenizer the job trained with (its chat template can differ from the base
model's). Before anything is offered, llama.cpp loads base + adapter and is checked against the unmerged adapter
in float32 (backend/export/llamacpp_check.verify with the LoRA applied): the same tokenizer ids, chat template,
and, with an F16 base, identical greedy answers within the F16 logit tolerance. A QLoRA job's reference is its
de-quantised base + adapter, what the F16 base GGUF holds.
"""
from __future__ import annotations

import gc
import re
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def write(source, staging: Path, prompts, progress) -> tuple[dict, object, str]:
    """Write {job}-lora-f16.gguf, {base}-f16.gguf into `staging` and check them; returns (verification, the
    tokenizer, the base GGUF's file name). Failures raise with one sentence (the caller offers nothing)."""
    from backend import models
    from backend.export import ExportError
    from backend.export import llamacpp, llamacpp_check, llamacpp_lora
    from backend.models import adapters

    base = models.resolve(source.config.model)
    base_dir = Path(base.path)
    from backend.export import gguf_support_problem, write_model_gguf

    problem = gguf_support_problem(base_dir)   # before any work
    if problem:
        raise ExportError(problem)
    if not llamacpp.available():
        raise ExportError(f"a LoRA GGUF is checked in llama.cpp: {llamacpp.LlamaCppMissing()}")
    if not llamacpp_lora.converter_available():
        raise ExportError(str(llamacpp_lora.ConverterMissing()))
    staging.mkdir(parents=True)
    lora_path = staging / f"{source.job_id}-lora-f16.gguf"
    base_path = staging / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', base.name)}-f16.gguf"
    view = staging.with_name(staging.name + ".base")   # base weights + the job's tokenizer; removed below
    try:
        progress(0.05, "converting the adapter with llama.cpp's converter")
        llamacpp_lora.convert_adapter(source.path, base_dir, lora_path)
        tokenizer = adapters.load_tokenizer(source)
        _base_with_tokenizer(base_dir, tokenizer, view)
        writer = write_model_gguf(view, base_path, "f16",
                                  lambda f, text: progress(0.1 + 0.3 * f, f"writing the base GGUF F16: {text}"))
        progress(0.4, "verifying in llama.cpp: base + adapter against the unmerged adapter")

        def unmerged():
            model, _merge = adapters.load_merged(source, "float32")
            return model

        verification = llamacpp_check.verify(base_path, view, list(prompts), lora_path=lora_path,
                                             load_reference=unmerged)
        verification["writer"] = writer
        gc.collect()
    except llamacpp.LlamaCppError as error:
        raise ExportError(f"LoRA GGUF export failed: {error}; nothing is offered for download") from None
    finally:
        shutil.rmtree(view, ignore_errors=True)
    if not verification["ok"]:
        raise ExportError(f"LoRA GGUF export failed verification: {verification['reason']}; nothing is offered "
                          "for download")
    return verification, tokenizer, base_path.name


def _base_with_tokenizer(base_dir: Path, tokenizer, folder: Path) -> None:
    """A folder with the base model's weights and config (linked, not copied) and the job's tokenizer."""
    folder.mkdir(parents=True)
    for item in base_dir.iterdir():
        if item.is_file() and item.name not in TOKENIZER_FILES:
            (folder / item.name).symlink_to(item.resolve())
    tokenizer.save_pretrained(folder)
