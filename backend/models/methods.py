"""The method table: every fact the studio asks about a fine-tuning method, one row each, plus its peft builder.

lora   plain LoRA                      dora   weight-decomposed LoRA (use_dora)
qlora  LoRA on a 4-bit NF4 base        qdora  DoRA on a 4-bit NF4 base
pissa  LoRA initialised from the principal singular vectors (fast SVD: pissa_niter_4); the base becomes
       the residual, so the adapter is converted back to plain LoRA against the original weights at save.
olora  LoRA initialised from a QR decomposition of each weight (orthonormal B); residual base, converted
       back at save like PiSSA.
eva    data-driven: A from the singular vectors of each layer's inputs on lora.calibration_rows training rows,
       B = 0 (the model starts unchanged); peft moves rank to the layers whose inputs vary most (rank_pattern).
corda  data-driven: each weight decomposed against the covariance of its inputs on the calibration rows (IPM:
       the task's directions); residual base, converted back at save.
loftq  QLoRA whose adapter starts as the best rank-r fit of the 4-bit rounding error (backend/models/loftq.py); the
       4-bit base is untouched, so afterwards it is a QLoRA adapter in every way.
Toggles: rslora (alpha / sqrt(r) scaling), loraplus_ratio (LoRA+ optimizer: B learns ratio x faster).
The rest of peft's family, each its own config class (peft_type): vera (one pair of frozen random matrices
shared by every layer, only scaling vectors trained; lora.r is the shared projection rank), ia3 (learned
rescaling vectors on keys, values and the MLP's down projection), loha (Hadamard product of two low-rank
pairs), lokr (Kronecker product), oft (a block-diagonal orthogonal rotation of each weight).
prompt_tuning: prompt_tuning.virtual_tokens learned input embeddings in front of every row (peft's prompt
learning); no weight changes, so it cannot be merged (mergeable=False): adapter export and unmerged serving only.
galore: no adapter while training (trains_base): the base's target linear layers (lora.target_modules) train at
full rank with GaLore AdamW, whose state lives in a low-rank projection of each gradient; everything else is
frozen. At save the change of each layer becomes a plain LoRA adapter (its SVD at galore.save_rank), so the
playground, merge, export and serving read it as any LoRA (backend/stages/galore.py).

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
    extra = {}
    if spec.init_lora_weights == "eva":
        from peft import EvaConfig
        extra["eva_config"] = EvaConfig()          # peft's defaults: rank may move between layers up to 2 x r
    if spec.init_lora_weights == "corda":
        from peft.tuners.lora.config import CordaConfig
        extra["corda_config"] = CordaConfig(corda_method="ipm")   # instruction-previewed: fit the task's inputs
    return LoraConfig(
        **extra,
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


def build_prompt_tuning(config: "JobConfig"):
    from peft import PromptTuningConfig, PromptTuningInit
    settings = config.prompt_tuning
    # the init text's tokens are repeated or cut to virtual_tokens by peft; the tokenizer is the base model's own
    text = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": settings.init_text,
            "tokenizer_name_or_path": _model_path(config.model)} if settings.init == "text" else {}
    return PromptTuningConfig(num_virtual_tokens=settings.virtual_tokens, task_type="CAUSAL_LM", **text)


def _model_path(model: str) -> str:
    from backend import models
    return str(models.resolve(model).path)


def _linear_module_names(model) -> list[str]:
    """The names of the model's linear layers below the LM head: what "all-linear" means for this model."""
    import torch

    output = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not output})


def _padded_batches(rows: list[list[int]], size: int, pad_id: int) -> list[dict]:
    """Token-id rows as right-padded {input_ids, attention_mask} batches of `size` rows."""
    import torch

    batches = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        width = max(len(ids) for ids in chunk)
        batches.append({
            "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in chunk]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in chunk]),
        })
    return batches


def eva_init(base, peft_config, rows: list[list[int]], batch_size: int, pad_id: int):
    """EVA: the adapter's A starts as the top right-singular vectors of each layer's inputs on the calibration
    rows (B = 0, so the model starts unchanged); peft may move rank between layers (rank_pattern)."""
    from peft import get_peft_model, initialize_lora_eva_weights

    model = get_peft_model(base, peft_config)
    batches = [{key: t.to(base.device) for key, t in batch.items()}
               for batch in _padded_batches(rows, batch_size, pad_id)]
    initialize_lora_eva_weights(model, batches, show_progress_bar=False)
    return model


def corda_init(base, peft_config, rows: list[list[int]], batch_size: int, pad_id: int):
    """CorDA: each weight is decomposed against the covariance of its inputs on the calibration rows; the adapter
    takes the top components (IPM), and the base keeps the residual, like PiSSA."""
    import torch
    from peft import get_peft_model
    from peft.tuners.lora.corda import preprocess_corda

    if isinstance(peft_config.target_modules, str):
        # preprocess_corda matches target_modules by name only: "all-linear" becomes the model's linear layers
        peft_config.target_modules = _linear_module_names(base)

    def run_model():
        # one row per forward: peft's covariance hook reads a (tokens, features) input, so no batch and no padding
        with torch.no_grad():
            for ids in rows:
                base(input_ids=torch.tensor([ids], device=base.device))

    preprocess_corda(base, peft_config, run_model=run_model)
    return get_peft_model(base, peft_config)


def _loftq_init(model, config: "JobConfig") -> dict:
    from backend.models import loftq
    return {"loftq_" + key: value for key, value in loftq.initialise(model, config).items()}


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
    not_mergeable_reason: str = ""       # the one sentence every merge site shows when mergeable is False
    build_peft_config: Callable = build_lora
    peft_type: str = "LORA"              # peft's family: only LORA composes, batches mixed adapters, and converts
                                         # to a llama.cpp LoRA GGUF
    trainer_callbacks: Callable | None = None   # (config, run_dir) -> TrainerCallbacks the method needs
    init_from_data: Callable | None = None      # (base, peft_config, token-id rows, batch_size, pad_id) -> PeftModel:
                                                # a data-driven init that runs the base on some training rows first
    trains_base: bool = False            # no peft model while training: the base's own layers train (GaLore); the
                                         # saved adapter (peft_type) is derived from their change at save
    init_weights: Callable | None = None  # (new peft model, config) -> facts for run.json: sets the fresh
                                          # adapter's weights before training (LoftQ), so it does not start as a no-op

    @property
    def adapter_starts_as_noop(self) -> bool:
        """A new adapter leaves the model unchanged (B = 0), so the base alone is the starting model."""
        return not self.converts_at_save and self.init_weights is None


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
    MethodSpec(Method.OLORA, "OLoRA", init_lora_weights="olora", converts_at_save=True),
    MethodSpec(Method.EVA, "EVA", init_lora_weights="eva", init_from_data=eva_init),
    MethodSpec(Method.CORDA, "CorDA", init_lora_weights="corda", converts_at_save=True, init_from_data=corda_init),
    MethodSpec(Method.LOFTQ, "LoftQ (QLoRA with a quantisation-aware start)", four_bit=True,
               init_weights=_loftq_init),
    MethodSpec(Method.PROMPT_TUNING, "Prompt tuning", mergeable=False, build_peft_config=build_prompt_tuning,
               peft_type="PROMPT_TUNING",
               not_mergeable_reason="not mergeable: prompt tuning adds virtual tokens, it does not change weights"),
    # the LoraConfig built here is never trained: GaLore saves a LoRA adapter of its own ranks (stages/galore.py)
    MethodSpec(Method.GALORE, "GaLore (full-rank layers, low-rank optimizer)", trains_base=True),
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
