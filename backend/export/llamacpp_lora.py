"""A trained PEFT LoRA adapter as a llama.cpp LoRA GGUF: the small file loaded next to the base model's GGUF
(`llama-cli -m base.gguf --lora adapter.gguf`, Ollama's `ADAPTER`), written by llama.cpp's own converter
(convert_lora_to_gguf.py) and checked by loading base + adapter in llama.cpp itself.

Why llama.cpp's converter: the tensor names, the A/B layout and the adapter metadata (general.type "adapter",
adapter.type "lora", adapter.lora.alpha) are whatever llama.cpp reads; its own script is the one that stays right
as llama.cpp changes, so we run it rather than re-implement it.

How:
- `./studio.sh` puts the scripts of the llama.cpp commit that llama-cpp-python was built from into
  $VENV/share/llamacpp-convert: convert_lora_to_gguf.py, the convert_hf_to_gguf.py and conversion/ package it
  imports, and gguf-py/ (the `gguf` package of that commit). The converter runs as a subprocess with gguf-py
  first on PYTHONPATH (the script also puts it first on sys.path itself), so it gets the gguf it was written for
  while the studio's own writer keeps the venv's PyPI gguf.
- What the converter needs (llama-cpp-python 0.3.36; the studio's torch 2.13 / transformers 5.25 work, its
  requirements pin transformers 4.57 and torch 2.11): the adapter folder (adapter_config.json +
  adapter_model.safetensors or .bin) and, with --base, a local folder holding the base model's config.json: only
  the config is read (no weights, no tokenizer, so no sentencepiece / protobuf). Without --base it would fetch
  the config from the Hugging Face hub; we always pass --base and run it with HF_HUB_OFFLINE=1.
- llama.cpp scales each adapter matrix by alpha / rank and the file holds one alpha. Adapters it cannot express
  are refused before the converter runs, in one sentence: DoRA (magnitude vectors), LoRA biases, fully trained
  modules (modules_to_save) and trainable tokens, per-module alphas (alpha_pattern), non-LoRA PEFT types, and
  a LoRA on lm_head where the base ties it to the embeddings (llama.cpp issue 9065: it would not be applied).
  rsLoRA (alpha / sqrt(rank)) is written with alpha * sqrt(rank) so llama.cpp's alpha / rank is the same scale
  (only for one rank across modules). The converter's own refusals (a module llama.cpp cannot map) come back as
  one sentence with its last error line.
- The file is written to gguf.partial_path(out) and renamed when the converter succeeded and the result reads
  back as a LoRA adapter; nothing is left at out_path otherwise.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend.export import llamacpp
from backend.export.gguf import partial_path

CONVERTER_ENV = "LORASTUDIO_LLAMACPP_CONVERT"   # overrides where the converter scripts are (tests, other set-ups)
CONVERTER_TIMEOUT_S = 1800
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class ConverterMissing(llamacpp.LlamaCppMissing):
    """llama.cpp's converter scripts (models and LoRA adapters) are not set up here; the message is one sentence."""

    def __init__(self, detail: str = ""):
        RuntimeError.__init__(self, f"llama.cpp's converter scripts are not set up in this environment"
                                    f"{f' ({detail})' if detail else ''}; run `{llamacpp.SETUP_COMMAND}` once "
                                    f"to set them up")


class AdapterNotConvertible(llamacpp.LlamaCppError):
    """The adapter cannot be written as a llama.cpp LoRA GGUF, or the converter failed; one sentence."""


# ---------------------------------------------------------------- where the converter is

def converter_dir() -> Path:
    """The folder holding convert_lora_to_gguf.py and its companions ($VENV/share/llamacpp-convert)."""
    return Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "share" / "llamacpp-convert")


def converter_available() -> bool:
    folder = converter_dir()
    return all((folder / name).exists() for name in
               ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion/__init__.py",
                "gguf-py/gguf/__init__.py"))


# ---------------------------------------------------------------- conversion

def convert_adapter(adapter_dir: Path, base_model_dir: Path, out_path: Path) -> dict:
    """Write the PEFT LoRA adapter in adapter_dir (trained on the model in base_model_dir) as an F16 llama.cpp
    LoRA GGUF at out_path; returns {path, bytes, seconds, tensors, alpha, rank}. Raises AdapterNotConvertible
    (one sentence) for an adapter llama.cpp cannot hold or a converter failure, ConverterMissing where the
    converter is not set up."""
    adapter_dir, base_model_dir, out_path = Path(adapter_dir), Path(base_model_dir), Path(out_path)
    if not converter_available():
        raise ConverterMissing(f"no converter scripts in {converter_dir()}")
    config = _adapter_config(adapter_dir)
    if not (base_model_dir / "config.json").is_file():
        raise AdapterNotConvertible(f"the base model folder '{base_model_dir}' has no config.json, which "
                                    f"llama.cpp's converter needs to name the adapter's tensors")
    if "lm_head" in str(config.get("target_modules") or "") and _tied(base_model_dir):
        raise AdapterNotConvertible(f"the adapter '{adapter_dir.name}' cannot be exported as a llama.cpp LoRA GGUF: "
                                    f"it adapts lm_head, which this base model ties to its embeddings and "
                                    f"llama.cpp would not apply")
    alpha, rank = _llamacpp_alpha(adapter_dir.name, config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_path)
    partial.unlink(missing_ok=True)   # a torn file from a conversion that was killed
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="lora-gguf-") as scratch:
            source = adapter_dir
            if alpha != float(config["lora_alpha"]):   # rsLoRA: the same scale through llama.cpp's alpha / rank
                source = _with_alpha(adapter_dir, config, alpha, Path(scratch) / "adapter")
            _run_converter(source, base_model_dir, partial, cwd=Path(scratch), name=adapter_dir.name)
        facts = _read_back(partial, adapter_dir.name)
        partial.replace(out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"path": str(out_path), "bytes": out_path.stat().st_size,
            "seconds": round(time.monotonic() - started, 2), "alpha": alpha, "rank": rank, **facts}


def _adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json, after the checks that an adapter llama.cpp can hold passes (one sentence each)."""
    name = adapter_dir.name
    if not adapter_dir.is_dir():
        raise AdapterNotConvertible(f"there is no adapter folder at '{adapter_dir}'")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterNotConvertible(f"'{name}' is not a PEFT adapter folder (it has no adapter_config.json)") \
            from None
    except (OSError, ValueError) as error:
        raise AdapterNotConvertible(f"the adapter '{name}' has an unreadable adapter_config.json "
                                    f"({llamacpp._short(error)})") from None
    if not isinstance(config, dict):
        raise AdapterNotConvertible(f"the adapter '{name}' has an adapter_config.json that is not a JSON object")
    if not any((adapter_dir / weights).is_file() for weights in _ADAPTER_WEIGHTS):
        raise AdapterNotConvertible(f"the adapter '{name}' has no weights ({' or '.join(_ADAPTER_WEIGHTS)})")
    peft_type = str(config.get("peft_type") or "")
    if peft_type.upper() != "LORA":
        raise AdapterNotConvertible(f"the adapter '{name}' is a {peft_type or 'non-LoRA'} adapter, and a llama.cpp "
                                    f"LoRA GGUF holds LoRA adapters only")
    refusals = [
        (config.get("use_dora"), "it is a DoRA adapter (llama.cpp has no place for its magnitude vectors)"),
        (config.get("lora_bias"), "it trains LoRA biases (lora_bias), which llama.cpp does not apply"),
        (config.get("modules_to_save"), f"it carries fully trained modules "
                                        f"({', '.join(map(str, config.get('modules_to_save') or []))}), which a "
                                        f"llama.cpp LoRA GGUF cannot hold"),
        (config.get("trainable_token_indices"), "it trains token embeddings (trainable_token_indices), which a "
                                                "llama.cpp LoRA GGUF cannot hold"),
        (config.get("use_qalora") or config.get("use_bdlora"), "it is a QA-LoRA / block-diagonal LoRA variant"),
        (any(float(value) != float(config.get("lora_alpha", 0))
             for value in (config.get("alpha_pattern") or {}).values()),
         "it sets alphas per module (alpha_pattern), and a llama.cpp LoRA GGUF holds one alpha"),
    ]
    for refused, why in refusals:
        if refused:
            raise AdapterNotConvertible(f"the adapter '{name}' cannot be exported as a llama.cpp LoRA GGUF: {why}")
    if not isinstance(config.get("lora_alpha"), (int, float)) or not isinstance(config.get("r"), int):
        raise AdapterNotConvertible(f"the adapter '{name}' has no numeric r and lora_alpha in adapter_config.json")
    return config


def _tied(base_model_dir: Path) -> bool:
    try:
        config = json.loads((base_model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("tie_word_embeddings", True)) if isinstance(config, dict) else False


def _llamacpp_alpha(name: str, config: dict) -> tuple[float, int]:
    """(the alpha to write so llama.cpp's alpha / rank is peft's scale, the rank)."""
    alpha, rank = float(config["lora_alpha"]), int(config["r"])
    if not config.get("use_rslora"):
        return alpha, rank
    if any(int(value) != rank for value in (config.get("rank_pattern") or {}).values()):
        raise AdapterNotConvertible(f"the adapter '{name}' cannot be exported as a llama.cpp LoRA GGUF: it is an "
                                    f"rsLoRA adapter with ranks per module (rank_pattern), and llama.cpp scales "
                                    f"every module by one alpha / rank")
    return alpha * math.sqrt(rank), rank


def _with_alpha(adapter_dir: Path, config: dict, alpha: float, folder: Path) -> Path:
    """A copy of the adapter folder for the converter (weights linked, not copied) whose config has `alpha`."""
    folder.mkdir()
    for item in adapter_dir.iterdir():
        if item.name != "adapter_config.json":
            (folder / item.name).symlink_to(item.resolve())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": alpha, "use_rslora": False}),
                                                encoding="utf-8")
    return folder


def converter_env() -> dict:
    """The converter's environment: offline, and the gguf-py of its llama.cpp commit first on PYTHONPATH."""
    folder = converter_dir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(folder / "gguf-py"), os.environ.get("PYTHONPATH")])))
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _run_converter(adapter_dir: Path, base_model_dir: Path, out: Path, cwd: Path, name: str) -> None:
    folder = converter_dir()
    env = converter_env()
    # the converter fills {ftype} templates in the file name with str.format: braces in ours are escaped
    outfile = out.resolve().parent / out.name.replace("{", "{{").replace("}", "}}")
    command = [sys.executable, str(folder / "convert_lora_to_gguf.py"), "--base", str(base_model_dir.resolve()),
               "--outfile", str(outfile), "--outtype", "f16", str(adapter_dir.resolve())]
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                                timeout=CONVERTER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AdapterNotConvertible(f"llama.cpp's converter did not finish converting the adapter '{name}' within "
                                    f"{CONVERTER_TIMEOUT_S} s") from None
    if result.returncode != 0 or not out.is_file():
        raise AdapterNotConvertible(f"llama.cpp's converter could not convert the adapter '{name}' "
                                    f"(exit status {result.returncode}: {_converter_error(result.stderr)})")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)")
_LOG_ERROR = re.compile(r"^(ERROR|CRITICAL):[\w.-]+:\s*(.*)$")


def _converter_error(stderr: str) -> str:
    """The line that says why the converter failed: a traceback's exception line, else its first ERROR log line
    (the later ones are hints), else its last line."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        for line in reversed(lines):
            if _EXCEPTION_LINE.match(line):
                return line[:300]
    for line in lines:
        match = _LOG_ERROR.match(line)
        if match:
            return match.group(2)[:300]
    return (lines[-1] if lines else "no error message")[:300]


def _read_back(path: Path, name: str) -> dict:
    """Check that the converter wrote a llama.cpp LoRA adapter; {tensors, architecture}."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        fields = {key: reader.fields[key].contents() for key in
                  ("general.type", "adapter.type", "general.architecture") if key in reader.fields}
        tensors = len(reader.tensors)
    except Exception as error:   # noqa: BLE001 - any reader failure is a broken file
        raise AdapterNotConvertible(f"llama.cpp's converter wrote an unreadable file for the adapter '{name}' "
                                    f"({llamacpp._short(error)})") from None
    if fields.get("general.type") != "adapter" or fields.get("adapter.type") != "lora" or not tensors:
        raise AdapterNotConvertible(f"llama.cpp's converter wrote no LoRA adapter for '{name}' "
                                    f"(general.type {fields.get('general.type')!r}, adapter.type "
                                    f"{fields.get('adapter.type')!r}, {tensors} tensors)")
    return {"tensors": tensors, "architecture": fields.get("general.architecture")}


# ---------------------------------------------------------------- base + adapter in llama.cpp

def greedy_answer_with_lora(base_gguf: Path, lora_gguf: Path, prompt_ids: list[int],
                            max_new_tokens: int) -> list[int]:
    """llama.cpp's greedy answer with the LoRA GGUF applied to the base GGUF (as `--lora` does)."""
    return llamacpp.greedy_answer(base_gguf, prompt_ids, max_new_tokens, lora_path=lora_gguf)


def next_token_logits_with_lora(base_gguf: Path, lora_gguf: Path, ids: list[int]):
    """Teacher-forced logits (positions x vocabulary) of base + adapter in llama.cpp."""
    return llamacpp.next_token_logits(base_gguf, ids, lora_path=lora_gguf)


def next_token_choices_with_lora(base_gguf: Path, lora_gguf: Path, ids: list[int]) -> list[int]:
    """Teacher-forced: the token base + adapter ranks first after every position of `ids`."""
    return next_token_logits_with_lora(base_gguf, lora_gguf, ids).argmax(axis=-1).tolist()
