"""Method -> peft LoraConfig (+ BitsAndBytesConfig for 4-bit bases). Small and pure: no model is touched.

lora   plain LoRA                      dora   weight-decomposed LoRA (use_dora)
qlora  LoRA on a 4-bit NF4 base        qdora  DoRA on a 4-bit NF4 base
pissa  LoRA initialised from the principal singular vectors (fast SVD: pissa_niter_4); the base becomes
       the residual, so the adapter is converted back to plain LoRA against the original weights at save.
Toggles: rslora (alpha / sqrt(r) scaling), loraplus_ratio (LoRA+ optimizer: B learns ratio x faster).
"""
from __future__ import annotations

from dataclasses import dataclass

from backend.config import JobConfig

# Attention projections across common architectures (llama/qwen/mistral, gpt-2 style, phi, falcon, gpt-neox)
ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "qkv_proj", "query_key_value", "dense"]
FOUR_BIT_METHODS = ("qlora", "qdora")


@dataclass
class MethodPlan:
    lora_config: object                  # peft.LoraConfig
    quantization_config: object | None   # transformers.BitsAndBytesConfig, or None for a full-precision base
    loraplus_ratio: float | None


def build(config: JobConfig, compute_dtype=None) -> MethodPlan:
    """The peft / bitsandbytes configuration for a job's method and LoRA settings."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    settings = config.lora
    targets = settings.target_modules
    if targets == "attention":
        targets = ATTENTION_MODULES
    lora_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_rslora=settings.rslora,
        use_dora=config.method in ("dora", "qdora"),
        init_lora_weights="pissa_niter_4" if config.method == "pissa" else True,
        task_type="CAUSAL_LM",
        bias="none",
    )
    quantization = None
    if config.method in FOUR_BIT_METHODS:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.float32,
        )
    return MethodPlan(lora_config=lora_config, quantization_config=quantization,
                      loraplus_ratio=settings.loraplus_ratio)

