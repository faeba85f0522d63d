"""GaLore (gradient low-rank projection, Zhao et al. 2024) as a studio method: no adapter while training.

The base's target linear layers (lora.target_modules: all-linear / attention / a list, resolved the way peft
resolves them) train at full rank with transformers' `optim="galore_adamw"` (galore-torch's GaLoreAdamW): each
gradient is projected to galore.rank before AdamW sees it, so the optimizer state is low rank while the weights
and their gradients are full size. Everything else (embeddings, norms, LM head) is frozen: transformers puts every
non-target parameter in a plain AdamW group, which would train them too.

At save the change of each trained layer, D = W' - W against the untouched base, becomes a plain peft LoRA
adapter from its SVD: B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T, lora_alpha = r (scale 1). galore.save_rank 0 keeps
every singular value (exact up to float error); a lower rank keeps the top ones, and the relative error
||D - BA|| / ||D|| over all layers is reported. Every layer has the same r (a layer of smaller rank is padded with
zero rows), so llama.cpp, vLLM and peft scale them alike. The playground, merge, export and serving then take it
as any LoRA adapter.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from backend import models
from backend.config import JobConfig
from backend.models.methods import ATTENTION_MODULES

log = logging.getLogger("lorastudio")

OPTIMIZER = "galore_adamw"        # transformers' name for galore-torch's GaLoreAdamW


def target_names(model, config: JobConfig) -> list[str]:
    """Full names of the linear layers GaLore trains, as peft would adapt them for lora.target_modules:
    all-linear = every linear layer but the LM head; attention / a list = linear layers whose name ends in one."""
    import torch

    output = model.get_output_embeddings()
    chosen = config.lora.target_modules
    suffixes = ATTENTION_MODULES if chosen == "attention" else chosen
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        if chosen == "all-linear" or any(name == s or name.endswith("." + s) for s in suffixes):
            names.append(name)
    if not names:
        raise ValueError(f"lora.target_modules: {chosen} names no linear layer of this model for galore to train; "
                         "use all-linear or attention")
    return names


def prepare(model, config: JobConfig):
    """Freeze everything but the target layers' weights (their biases stay frozen too); returns the model."""
    names = set(target_names(model, config))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.rsplit(".", 1)[0] in names and name.endswith(".weight")
    if config.training.gradient_checkpointing:
        # the embeddings are frozen: reentrant checkpoints need an input that requires grad to backpropagate at all
        model.enable_input_require_grads()
    return model


def optimizer_args(model, config: JobConfig) -> dict:
    """TrainingArguments for GaLore AdamW on exactly the target layers (one anchored regex of their full names)."""
    allow_projector_state()
    settings = config.galore
    pattern = "(" + "|".join(re.escape(name) for name in target_names(model, config)) + ")"
    return {"optim": OPTIMIZER, "optim_target_modules": pattern,
            "optim_args": f"rank={settings.rank}, update_proj_gap={settings.update_proj_gap}, "
                          f"scale={settings.scale}, proj_type=std"}


def allow_projector_state() -> None:
    """Let a resumed job read its checkpoint's optimizer state: GaLore AdamW keeps a GaLoreProjector object (rank,
    scale, the projection matrix) per layer, and the trainer loads optimizer.pt with torch.load(weights_only=True),
    which refuses any class not allowlisted. Only that plain data class is added; the weights stay safetensors."""
    import torch
    from galore_torch.galore_projector import GaLoreProjector

    torch.serialization.add_safe_globals([GaLoreProjector])


def lora_factors(delta, rank: int):
    """(B, A) with B @ A the best rank-`rank` approximation of delta (float32): B = U sqrt(S), A = sqrt(S) V^T."""
    import torch

    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def save_adapter(model, tokenizer, run_dir: Path, config: JobConfig, dtype) -> tuple[Path, dict]:
    """The trained layers' change as a plain LoRA adapter in runs/<id>/adapter/ (+ the tokenizer), and the facts
    for results: the adapter's rank and the relative reconstruction error ||D - BA|| / ||D|| over all layers."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    names = target_names(model, config)
    trained = dict(model.named_modules())
    original = models.load_model(config.model, dtype=dtype)     # the untouched base, on the CPU
    untouched = dict(original.named_modules())
    shapes = [tuple(trained[name].weight.shape) for name in names]
    full = max(min(shape) for shape in shapes)
    rank = min(config.galore.save_rank, full) if config.galore.save_rank else full
    state, lost, total = {}, 0.0, 0.0
    with torch.no_grad():
        for name in names:
            weight = trained[name].weight
            delta = weight.float() - untouched[name].weight.to(weight.device).float()
            b, a = lora_factors(delta, rank)
            lost += (delta - b @ a).pow(2).sum().item()
            total += delta.pow(2).sum().item()
            keep = b.shape[1]       # a layer whose smaller side is below the rank: zero rows pad it to the rank
            padded_b = torch.zeros(delta.shape[0], rank)
            padded_a = torch.zeros(rank, delta.shape[1])
            padded_b[:, :keep], padded_a[:keep] = b.cpu(), a.cpu()
            state[f"base_model.model.{name}.lora_B.weight"] = padded_b
            state[f"base_model.model.{name}.lora_A.weight"] = padded_a
    error = (lost / total) ** 0.5 if total > 0 else 0.0
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in names})
    # short names when they pick exactly the trained layers (as lora.target_modules would), else the full names
    by_suffix = [n for n, m in untouched.items() if isinstance(m, torch.nn.Linear)
                 and m is not original.get_output_embeddings() and n.rsplit(".", 1)[-1] in suffixes]
    lora_config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                             target_modules=suffixes if sorted(by_suffix) == sorted(names) else names)
    peft_model = get_peft_model(original, lora_config)
    result = set_peft_model_state_dict(peft_model, state)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"galore: the adapter did not take {len(result.unexpected_keys)} of its weights, e.g. "
                           f"{result.unexpected_keys[0]}")
    adapter_dir = run_dir / "adapter"
    staging = run_dir / ".adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    log.info("galore: %d layers saved as a LoRA adapter of rank %d (reconstruction error %.3g)", len(names), rank,
             error)
    return adapter_dir, {"galore_adapter_rank": rank, "galore_reconstruction_error": error,
                         "galore_trained_layers": len(names)}
