"""The method table: every fact the studio asks about a fine-tuning method, one row each, plus its peft builder.

lora   plain LoRA                      dora   weight-decomposed LoRA (use_dora)
qlora  LoRA on a 4-bit NF4 base        qdora  DoRA on a 4-bit NF4 base
pissa  LoRA initialised from the principal singular vectors (fast SVD: pissa_niter_4); the base becomes
       the residual, so the adapter is converted back to plain LoRA against the original weights at save.
Toggles: rslora (alpha / sqrt(r) scaling), loraplus_ratio (LoRA+ optimizer: B learns ratio x faster).

A new method is one row in METHODS (and, if peft builds it with another config class, one builder function);
the stages, the estimator, the adapters and the export read the facts from here. Small and pure: no model
is touched, and torch / peft are imported only when a config is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from backend.vocab import Method

if TYPE_CHECKING:
    from backend.config import JobConfig

# Attention projections across common architectures (llama/qwen/mistral, gpt-2 style, phi, falcon, gpt-neox)
ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "qkv_proj", "query_key_value", "dense"]


def build_lora(config: "JobConfig"):
    """peft.LoraConfig for the LoRA family (LoRA, DoRA, PiSSA, with or without a 4-bit base)."""
    from peft import LoraConfig

    spec = METHODS[config.method]
    settings = config.lora
    targets = ATTENTION_MODULES if settings.target_modules == "attention" else settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.rslora,
        use_dora=spec.dora,
        init_lora_weights=spec.init_lora_weights,
        task_type="CAUSAL_LM",
        bias="none",
    )


@dataclass(frozen=True)
class MethodSpec:
    method: Method
    label: str                           # what the Train tab shows
    four_bit: bool = False               # the base is loaded in 4-bit NF4 (bitsandbytes)
    dora: bool = False                   # weight-decomposed: magnitude vectors, slower steps
    init_lora_weights: object = True     # peft's init_lora_weights for the LoRA family
    converts_at_save: bool = False       # the base is changed at init (PiSSA residual): convert the adapter back
    mergeable: bool = True               # merge_and_unload gives a plain model (into a de-quantised base if 4-bit)
    build_peft_config: Callable = build_lora


METHODS: dict[Method, MethodSpec] = {spec.method: spec for spec in (
    MethodSpec(Method.LORA, "LoRA"),
    MethodSpec(Method.QLORA, "QLoRA (4-bit base)", four_bit=True),
    MethodSpec(Method.DORA, "DoRA", dora=True),
    MethodSpec(Method.QDORA, "QDoRA (DoRA, 4-bit)", four_bit=True, dora=True),
    MethodSpec(Method.PISSA, "PiSSA", init_lora_weights="pissa_niter_4", converts_at_save=True),
)}


def spec(method) -> MethodSpec:
    """The row of a method (a Method or its name)."""
    return METHODS[Method(method)]


@dataclass
class MethodPlan:
    peft_config: object                  # a peft config (LoraConfig for the LoRA family)
    quantization_config: object | None   # transformers.BitsAndBytesConfig, or None for a full-precision base
    loraplus_ratio: float | None


def build(config: "JobConfig", compute_dtype=None) -> MethodPlan:
    """The peft / bitsandbytes configuration for a job's method and LoRA settings."""
    method = spec(config.method)
    quantization = None
    if method.four_bit:
        import torch
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.float32,
        )
    return MethodPlan(peft_config=method.build_peft_config(config), quantization_config=quantization,
                      loraplus_ratio=config.lora.loraplus_ratio)
