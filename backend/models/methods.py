"""The method table: every fact the studio asks about a fine-tuning method, one row each, plus its peft builder.

lora   plain LoRA                      dora   weight-decomposed LoRA (use_dora)
qlora  LoRA on a 4-bit NF4 base        qdora  DoRA on a 4-bit NF4 base
pissa  LoRA initialised from the principal singular vectors (fast SVD: pissa_niter_4); the base becomes
       the residual, so the adapter is converted back to plain LoRA against the original weights at save.
Toggles: rslora (alpha / sqrt(r) scaling), loraplus_ratio (LoRA+ optimizer: B learns ratio x faster).
The rest of peft's family, each its own config class (peft_type): vera (one pair of frozen random matrices
shared by every layer, only scaling vectors trained; lora.r is the shared projection rank), ia3 (learned
rescaling vectors on keys, values and the MLP's down projection), loha (Hadamard product of two low-rank
pairs), lokr (Kronecker product), oft (a block-diagonal orthogonal rotation of each weight).

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


def _targets(config: "JobConfig"):
    settings = config.lora
    return ATTENTION_MODULES if settings.target_modules == "attention" else settings.target_modules


def build_vera(config: "JobConfig"):
    from peft import VeraConfig
    # save_projection: the shared random matrices travel with the adapter, so it reloads without the seed
    return VeraConfig(r=config.lora.r, target_modules=_targets(config), vera_dropout=config.lora.dropout,
                      save_projection=True, task_type="CAUSAL_LM", bias="none")


def build_ia3(config: "JobConfig"):
    from peft import IA3Config
    # all-linear = peft's own per-architecture choice (keys, values, MLP down projection; the last one is
    # scaled on its input): IA3 has no rank, and rescaling every linear layer buys little
    if config.lora.target_modules == "all-linear":
        return IA3Config(task_type="CAUSAL_LM")
    return IA3Config(target_modules=_targets(config), feedforward_modules=[], task_type="CAUSAL_LM")


def build_loha(config: "JobConfig"):
    from peft import LoHaConfig
    return LoHaConfig(r=config.lora.r, alpha=config.lora.alpha, module_dropout=config.lora.dropout,
                      target_modules=_targets(config), task_type="CAUSAL_LM")


def build_lokr(config: "JobConfig"):
    from peft import LoKrConfig
    return LoKrConfig(r=config.lora.r, alpha=config.lora.alpha, module_dropout=config.lora.dropout,
                      target_modules=_targets(config), task_type="CAUSAL_LM")


OFT_BLOCK_SIZE = 32   # each rotation acts on blocks of 32 features (peft's default); r follows from it


def build_oft(config: "JobConfig"):
    from peft import OFTConfig
    return OFTConfig(r=0, oft_block_size=OFT_BLOCK_SIZE, module_dropout=config.lora.dropout,
                     target_modules=_targets(config), task_type="CAUSAL_LM")


def build_adalora(config: "JobConfig"):
    from peft import AdaLoraConfig
    ada, steps = config.adalora, config.training.max_steps
    return AdaLoraConfig(init_r=ada.init_r, target_r=ada.target_r, total_step=steps,
                         tinit=int(ada.warmup * steps), tfinal=int(ada.final * steps), deltaT=ada.interval,
                         lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                         target_modules=_targets(config), task_type="CAUSAL_LM")


def adalora_callbacks(config: "JobConfig", run_dir) -> list:
    """AdaLoRA re-allocates its ranks from the gradients after each optimizer step, before they are zeroed:
    peft leaves that call to the training loop (`update_and_allocate`), so a trainer callback makes it."""
    from transformers import TrainerCallback

    class AdaLoraRankAllocation(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            tuner = getattr(model, "base_model", None)
            if tuner is not None and hasattr(tuner, "update_and_allocate"):
                tuner.update_and_allocate(state.global_step)

    return [AdaLoraRankAllocation()]


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
    peft_type: str = "LORA"              # peft's family: only LORA composes, batches mixed adapters, and converts
                                         # to a llama.cpp LoRA GGUF
    trainer_callbacks: Callable | None = None   # (config, run_dir) -> TrainerCallbacks the method needs


METHODS: dict[Method, MethodSpec] = {spec.method: spec for spec in (
    MethodSpec(Method.LORA, "LoRA"),
    MethodSpec(Method.QLORA, "QLoRA (4-bit base)", four_bit=True),
    MethodSpec(Method.DORA, "DoRA", dora=True),
    MethodSpec(Method.QDORA, "QDoRA (DoRA, 4-bit)", four_bit=True, dora=True),
    MethodSpec(Method.PISSA, "PiSSA", init_lora_weights="pissa_niter_4", converts_at_save=True),
    MethodSpec(Method.VERA, "VeRA", build_peft_config=build_vera, peft_type="VERA"),
    MethodSpec(Method.IA3, "IA3", build_peft_config=build_ia3, peft_type="IA3"),
    MethodSpec(Method.LOHA, "LoHa", build_peft_config=build_loha, peft_type="LOHA"),
    MethodSpec(Method.LOKR, "LoKr", build_peft_config=build_lokr, peft_type="LOKR"),
    MethodSpec(Method.OFT, "OFT", build_peft_config=build_oft, peft_type="OFT"),
    MethodSpec(Method.ADALORA, "AdaLoRA", build_peft_config=build_adalora, peft_type="ADALORA",
               trainer_callbacks=adalora_callbacks),
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
