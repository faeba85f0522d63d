"""A job's adapter, and a base model to put it on: shared by the playground and the export.

- `adapter_source(job_id)`: the finished adapter (runs/<id>/adapter/) or, while a job is still training or
  was stopped, its newest complete checkpoint.
- `load_with_adapters(sources)`: one base (4-bit like training for QLoRA / QDoRA jobs) with one or more
  adapters by name; disabling them gives the base on the same weights, never a second copy.
- `load_merged(source, dtype)`: a full-precision base (a QLoRA base is de-quantised first, so the merge never
  goes into 4-bit weights) with the adapter merged in; the playground's merged column and the export.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from backend import jobs, models
from backend.models import methods
from backend.jobs.checkpoints import latest_complete_checkpoint
from backend.config import JobConfig

log = logging.getLogger("lorastudio")

DTYPES = ("float32", "bfloat16", "float16")


class AdapterError(ValueError):
    """One sentence the user can act on (missing job, no adapter yet, mismatched bases)."""


@dataclass
class AdapterSource:
    job_id: str
    path: Path          # a PEFT folder (adapter_config.json + adapter_model.safetensors)
    label: str          # "final adapter" or "checkpoint-20 (job running)"
    config: JobConfig
    status: str

    @property
    def four_bit(self) -> bool:
        return methods.spec(self.config.method).four_bit

    @property
    def final(self) -> bool:
        return self.path.name == "adapter"


def adapter_source(job_id: str) -> AdapterSource:
    job_id = (job_id or "").strip()
    job = jobs.get(job_id) if job_id else None
    if job is None:
        raise AdapterError(f"no job '{job_id}' in this workspace (it may have been deleted); "
                           "see `lorastudio jobs list` for the jobs there are")
    final = job.run_dir / "adapter"
    if (final / "adapter_config.json").is_file():
        return AdapterSource(job.id, final, "final adapter", job.config, job.status)
    checkpoint = latest_complete_checkpoint(job.run_dir / "checkpoints", remove_torn=False)
    if checkpoint is not None and methods.spec(job.config.method).trains_base:
        raise AdapterError(f"job {job.id} has only {checkpoint.name}; {methods.spec(job.config.method).label} "
                           "checkpoints are whole models, turned into a LoRA adapter when the job finishes: wait for "
                           "it to complete")
    if checkpoint is not None and (checkpoint / "adapter_config.json").is_file():
        if methods.spec(job.config.method).converts_at_save:
            raise AdapterError(f"job {job.id} has only {checkpoint.name}; "
                               f"{methods.spec(job.config.method).label} checkpoints hold the adapter "
                               "for the residual base and are converted when the job finishes: wait for it to "
                               "complete")
        return AdapterSource(job.id, checkpoint, f"{checkpoint.name} (job {job.status})", job.config, job.status)
    raise AdapterError(f"job {job.id} ({job.status}, step {job.step}) has no adapter yet: it saves one every "
                       f"{job.config.training.save_steps} steps and at the end")


def torch_dtype(name: str):
    import torch
    if name not in DTYPES:
        raise AdapterError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype():
    """float32 on CPU; bfloat16 on a GPU that has it (as training's precision: auto does)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if torch.cuda.is_available() else torch.float32


def load_tokenizer(source: AdapterSource):
    """The tokenizer saved with the adapter: it carries the chat template used in training."""
    from transformers import AutoTokenizer

    folder = source.path if (source.path / "tokenizer_config.json").is_file() else None
    if folder is None:
        return models.load_tokenizer(source.config.model, source.config.chat_template,
                                     source.config.thinking)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_with_adapters(sources: list[AdapterSource], names: list[str] | None = None):
    """One base with each source's adapter loaded under its name (default "adapter"); adapters off = base.

    The base is 4-bit (as in training) only when every source was trained on a 4-bit base.
    """
    from peft import PeftModel

    names = names or ["adapter"] + [f"adapter{i}" for i in range(1, len(sources))]
    base_model = sources[0].config.model
    for other in sources[1:]:
        if models.resolve(other.config.model).path != models.resolve(base_model).path:
            raise AdapterError(f"jobs {sources[0].job_id} and {other.job_id} were trained on different base "
                               f"models ({base_model} vs {other.config.model}); compare jobs of one base model")
    four_bit = all(s.four_bit for s in sources)
    dtype = compute_dtype()
    quantization = methods.build(sources[0].config, compute_dtype=dtype).quantization_config if four_bit else None
    target = device()
    base = models.load_model(base_model, dtype=dtype, quantization_config=quantization,
                             device_map={"": 0 if target == "cuda" else "cpu"} if quantization else None)
    if quantization is None:
        base.to(target)
    model = PeftModel.from_pretrained(base, str(sources[0].path), adapter_name=names[0])
    for name, source in zip(names[1:], sources[1:]):
        model.load_adapter(str(source.path), adapter_name=name)
    model.set_adapter(names[0])
    model.eval()
    return model


def load_merged(source: AdapterSource, dtype_name: str = "float32", model_dtype=None):
    """Base in full precision (de-quantised when the job trained on 4 bits) + adapter, merged in place.

    Returns (unmerged_forward, merge): call `merge()` after taking any reference outputs from the unmerged
    model; it merges into the same weights (no second copy) and casts to `dtype_name`.
    """
    import torch
    from peft import PeftModel

    load_dtype = model_dtype or torch.float32
    if source.four_bit:
        quantization = methods.build(source.config, compute_dtype=load_dtype).quantization_config
        base = models.load_model(source.config.model, dtype=load_dtype, quantization_config=quantization,
                                 device_map={"": "cpu"})
        dequantize_4bit(base, load_dtype)
    else:
        base = models.load_model(source.config.model, dtype=load_dtype)
    model = PeftModel.from_pretrained(base, str(source.path))
    model.eval()

    def merge():
        merged = model.merge_and_unload()
        merged.to(torch_dtype(dtype_name))
        merged.config.dtype = torch_dtype(dtype_name)
        merged.eval()
        return merged

    return model, merge


def dequantize_4bit(model, dtype) -> None:
    """Replace every bitsandbytes Linear4bit with a plain Linear holding its de-quantised weight, one layer
    at a time, so the merged model equals base(4-bit) + adapter exactly as trained, in float."""
    import bitsandbytes as bnb
    import torch

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            if getattr(child.weight.quant_state, "packing_format_for_cpu", False):
                # repacked by bitsandbytes' CPU bfloat16 path (absmax rounded): not the weights it trained on
                raise AdapterError("the 4-bit base was repacked for bitsandbytes' CPU bfloat16 kernel; load it "
                                   "with models.load_model, which keeps the 4-bit layers as trained")
            weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
            linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                     dtype=dtype, device=weight.device)
            linear.weight = torch.nn.Parameter(weight, requires_grad=False)
            if child.bias is not None:
                linear.bias = torch.nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
            setattr(parent, name, linear)
    # the model is a plain float model now: drop every trace of the quantizer so save_pretrained writes floats
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attribute, value in (("hf_quantizer", None), ("quantization_method", None), ("is_quantized", False),
                             ("is_loaded_in_4bit", False)):
        if hasattr(model, attribute):
            setattr(model, attribute, value)
