"""A merged model folder as a GGUF written by llama.cpp's own converter (convert_hf_to_gguf.py), for every model
family that converter knows: Llama (Llama 3.x rope scaling included), Mistral, Qwen2 / Qwen2.5 / Qwen3, Gemma 2 /
Gemma 3, Phi-3 and the rest of its list, with BPE and sentencepiece vocabularies.

Why llama.cpp's converter: the tensor layout, the hyperparameter keys, the rope-scaling factors and the vocabulary
(BPE pre-tokenizer names, sentencepiece scores and token types) are whatever llama.cpp reads, and its own script
is the one that stays right as llama.cpp changes. The studio's writer (backend.export.gguf) stays for a setting
without the converter.

How:
- The scripts of the llama.cpp commit llama-cpp-python was built from are in $VENV/share/llamacpp-convert
  (set up by ./studio.sh, see backend.export.llamacpp_lora): convert_hf_to_gguf.py runs as a subprocess with that
  commit's gguf-py first on PYTHONPATH (the venv keeps PyPI gguf for the studio's writer) and HF_HUB_OFFLINE=1.
- `supported(model_dir)` answers before anything runs, in one sentence, from the converter's own files (read as
  text, not imported, since they need the other gguf): the architecture (config.json "architectures", or the
  text_config's, as the converter picks it) must be in its TEXT_MODEL_MAP; a BPE vocabulary (tokenizer.json, no
  tokenizer.model) must have a pre-tokenizer hash ("chkhsh": the sha256 of the token ids of the converter's probe
  text) that its get_vocab_base_pre() knows, or the converter stops with "BPE pre-tokenizer was not recognized";
  Gemma 1/2 and Phi-3 (unless its tokenizer_class is GPT2Tokenizer) read only a sentencepiece tokenizer.model.
- `convert_model` writes to gguf.partial_path(out) and renames when the converter succeeded and the file reads
  back; nothing is left at out_path otherwise. The converter's own failures come back as one sentence with its
  error line.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from hashlib import sha256
from pathlib import Path

from backend.export import llamacpp
from backend.export.gguf import partial_path
from backend.export.llamacpp_lora import (CONVERTER_TIMEOUT_S, ConverterMissing, _converter_error, converter_available,
                                          converter_dir, converter_env)

OUTTYPES = ("f16", "bf16", "q8_0")     # what the converter writes itself (k-quants: llamacpp.quantize on the F16)
# families whose converter class reads only a sentencepiece tokenizer.model (no BPE fallback)
_SENTENCEPIECE_ONLY = {"GemmaForCausalLM": "Gemma", "Gemma2ForCausalLM": "Gemma 2", "Phi3ForCausalLM": "Phi-3"}


class ModelNotConvertible(llamacpp.LlamaCppError):
    """llama.cpp's converter cannot take the model (architecture, vocabulary) or failed; one sentence."""


# ---------------------------------------------------------------- what the converter takes

def supported(model_dir: Path) -> str | None:
    """None when llama.cpp's converter can take the model in model_dir, else one sentence naming the
    architecture or vocabulary it cannot."""
    model_dir = Path(model_dir)
    name = model_dir.name
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"the model folder '{model_dir}' has no config.json"
    except (OSError, ValueError) as error:
        return f"the model '{name}' has an unreadable config.json ({llamacpp._short(error)})"
    if not isinstance(config, dict):
        return f"the model '{name}' has a config.json that is not a JSON object"
    arch = architecture(config)
    if arch is None:
        return f"the model '{name}' names no architecture in its config.json, so llama.cpp's converter cannot " \
               f"tell how to write it"
    if not converter_available():
        return None   # convert_model says that the converter is missing
    if arch not in known_architectures():
        return f"llama.cpp's converter does not support the architecture {arch} of the model '{name}', so it " \
               f"cannot be exported as GGUF"
    has_sentencepiece = (model_dir / "tokenizer.model").is_file()
    tokenizer_config = _json_or_empty(model_dir / "tokenizer_config.json")
    if arch in _SENTENCEPIECE_ONLY and not has_sentencepiece \
            and not (arch == "Phi3ForCausalLM" and tokenizer_config.get("tokenizer_class") == "GPT2Tokenizer"):
        return f"llama.cpp's converter reads the vocabulary of a {_SENTENCEPIECE_ONLY[arch]} model ({arch}) " \
               f"only from a sentencepiece tokenizer.model, which the model '{name}' does not have"
    if has_sentencepiece:
        return None
    if not (model_dir / "tokenizer.json").is_file():
        return f"the model '{name}' has neither a tokenizer.json nor a sentencepiece tokenizer.model, so " \
               f"llama.cpp's converter has no vocabulary to write"
    return _bpe_problem(model_dir, config)


def architecture(config: dict) -> str | None:
    """The architecture name the converter goes by: the first of "architectures", the text_config's where it
    names one (as conversion.base.get_model_architecture does for text models)."""
    arch = None
    if config.get("architectures"):
        arch = str(config["architectures"][0])
    text_config = config.get("text_config") or {}
    if isinstance(text_config, dict) and text_config.get("architectures") and arch not in (
            "StepVLForConditionalGeneration", "Sarashina2VisionForCausalLM", "Exaone4_5_ForConditionalGeneration",
            "Step3p7ForConditionalGeneration", "KimiK3ForConditionalGeneration"):
        arch = str(text_config["architectures"][0])
    return arch


@lru_cache(maxsize=4)
def _converter_facts(folder: str) -> tuple[frozenset, str, frozenset]:
    """(architecture names of conversion/__init__.py's TEXT_MODEL_MAP, the probe text and the known pre-tokenizer
    hashes of conversion/base.py's get_vocab_base_pre), read from the files as text."""
    package = Path(folder) / "conversion"
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        target = node.target if isinstance(node, ast.AnnAssign) else \
            (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and isinstance(node.value, ast.Dict):
            names.update(key.value for key in node.value.keys if isinstance(key, ast.Constant))
    base = (package / "base.py").read_text(encoding="utf-8")
    probe = re.search(r"^\s*chktxt = (.+)$", base, re.MULTILINE)
    hashes = frozenset(re.findall(r'chkhsh == "([0-9a-f]{64})"', base))
    return frozenset(names), (ast.literal_eval(probe.group(1)) if probe else ""), hashes


def known_architectures() -> frozenset:
    return _converter_facts(str(converter_dir()))[0]


def _bpe_problem(model_dir: Path, config: dict) -> str | None:
    """Why the converter would refuse the folder's BPE tokenizer.json (its get_vocab_base), or None."""
    from transformers import AutoTokenizer

    name = model_dir.name
    _, probe, hashes = _converter_facts(str(converter_dir()))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        vocab = tokenizer.get_vocab()
        chkhsh = sha256(str(tokenizer.encode(probe)).encode()).hexdigest()
    except Exception as error:   # noqa: BLE001 - any tokenizer failure is the converter's failure too
        return f"the tokenizer of the model '{name}' does not load ({llamacpp._short(error)}), so llama.cpp's " \
               f"converter cannot write its vocabulary"
    vocab_size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocab_size and vocab and max(vocab.values()) >= int(vocab_size):
        return f"the tokenizer of the model '{name}' has token ids up to {max(vocab.values())}, beyond the " \
               f"model's vocab_size {vocab_size}, which llama.cpp's converter refuses"
    if hashes and chkhsh not in hashes:
        return f"llama.cpp's converter does not recognise the BPE pre-tokenizer of the model '{name}' (its " \
               f"tokenizer.json hashes to chkhsh {chkhsh[:12]}…, which this llama.cpp version has no entry for)"
    return None


def _json_or_empty(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- conversion

def convert_model(model_dir: Path, out_path: Path, outtype: str = "f16") -> dict:
    """Write the HF model folder model_dir as one GGUF at out_path with llama.cpp's convert_hf_to_gguf.py
    (outtype f16, bf16 or q8_0); returns {path, bytes, seconds, outtype, tensors, architecture}. Raises
    ModelNotConvertible (one sentence) for a model the converter cannot take or a converter failure,
    ConverterMissing where the converter is not set up; nothing is left at out_path then."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUTTYPES:
        raise ModelNotConvertible(f"llama.cpp's converter writes {', '.join(OUTTYPES)}, not '{outtype}' "
                                  f"(quantise the F16 file for the k-quants)")
    if not model_dir.is_dir():
        raise ModelNotConvertible(f"there is no model folder at '{model_dir}'")
    if not converter_available():
        raise ConverterMissing(f"no converter scripts in {converter_dir()}")
    problem = supported(model_dir)
    if problem:
        raise ModelNotConvertible(problem)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_path)
    partial.unlink(missing_ok=True)   # a torn file from a conversion that was killed
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="model-gguf-") as scratch:
            _run(model_dir, partial, outtype, cwd=Path(scratch))
        facts = _read_back(partial, model_dir.name)
        partial.replace(out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"path": str(out_path), "bytes": out_path.stat().st_size, "outtype": outtype,
            "seconds": round(time.monotonic() - started, 2), **facts}


def _run(model_dir: Path, out: Path, outtype: str, cwd: Path) -> None:
    # the converter fills {ftype} templates in the file name with str.format: braces in ours are escaped
    outfile = out.resolve().parent / out.name.replace("{", "{{").replace("}", "}}")
    command = [sys.executable, str(converter_dir() / "convert_hf_to_gguf.py"), str(model_dir.resolve()),
               "--outfile", str(outfile), "--outtype", outtype]
    try:
        result = subprocess.run(command, cwd=cwd, env=converter_env(), capture_output=True, text=True,
                                errors="replace", timeout=CONVERTER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelNotConvertible(f"llama.cpp's converter did not finish converting the model '{model_dir.name}' "
                                  f"within {CONVERTER_TIMEOUT_S} s") from None
    if result.returncode != 0 or not out.is_file():
        raise ModelNotConvertible(f"llama.cpp's converter could not convert the model '{model_dir.name}' "
                                  f"(exit status {result.returncode}: {_converter_error(result.stderr)})")


def _read_back(path: Path, name: str) -> dict:
    """Check that the converter wrote a model GGUF; {tensors, architecture}."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else None
        tensors = len(reader.tensors)
    except Exception as error:   # noqa: BLE001 - any reader failure is a broken file
        raise ModelNotConvertible(f"llama.cpp's converter wrote an unreadable file for the model '{name}' "
                                  f"({llamacpp._short(error)})") from None
    if not arch or not tensors:
        raise ModelNotConvertible(f"llama.cpp's converter wrote no model for '{name}' (architecture {arch!r}, "
                                  f"{tensors} tensors)")
    return {"tensors": tensors, "architecture": arch}
