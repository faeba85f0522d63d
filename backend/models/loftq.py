"""LoftQ: a QLoRA adapter that starts by cancelling the 4-bit quantisation error (Li et al., 2023).

QLoRA starts from Q(W), the NF4-rounded weights, with a zero adapter: the model starts off by the rounding error.
LoftQ starts the adapter at the best rank-r fit of that error (an SVD of W - Q(W) per target layer, W read from
the model's own safetensors), so base + adapter starts close to W. The 4-bit base stays exactly what loading the
model in 4 bits gives, so the saved adapter is a plain QLoRA adapter: it plays on the 4-bit base exactly as it
trained, and merges into the de-quantised base like any QLoRA job's.

One round only, on purpose. LoftQ's further rounds re-quantise W minus the adapter, i.e. they change the 4-bit base
itself, which a plain 4-bit load of the original model cannot reproduce: the adapter would then need converting
for the float base (as PiSSA's is), and measured on dates-demo that lost the gain (the same trained adapter scored
72.5 % exact match converted on the float base, 87.5 % on its own 4-bit base). peft's CPU-free path
(`replace_lora_weights_loftq`) is one round for the same reason.

Why by hand: both of peft 0.21's LoftQ paths compute on "cuda" unconditionally (loftq_utils.py: compute_device =
"cuda"; AssertionError "Torch not compiled with CUDA enabled" on this machine). This is the same computation as
`replace_lora_weights_loftq` on whatever device the layer is on, with bitsandbytes' own de-quantiser (the layer's
own quant state, so Q is exactly what the 4-bit layer computes with) and torch's SVD. The adapter's scaling
(alpha / r) is divided out, so scaling x B A is the fit (peft's path assumes alpha = r).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("lorastudio")

PEFT_PREFIX = "base_model.model."


def original_weights(model_dir: Path):
    """{tensor name: loader} over the model folder's safetensors files (sharded or not), read one at a time."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"loftq: {model_dir} has no .safetensors weights to start from")
    where = {}
    for name in files:
        with safe_open(str(model_dir / name), framework="pt") as handle:
            where.update({key: model_dir / name for key in handle.keys()})

    def load(key: str):
        if key not in where:
            raise ValueError(f"loftq: the model's weights have no tensor '{key}' (looked in {', '.join(files)})")
        with safe_open(str(where[key]), framework="pt") as handle:
            return handle.get_tensor(key)
    return load


def fit_layer(weight, layer_weight, rank: int, scaling: float):
    """LoftQ on one 4-bit layer: (A, B, error before, error after), with scaling x B A the best rank-r fit of the
    rounding error W - Q. Errors are relative Frobenius norms: ||W - Q|| / ||W|| (plain QLoRA's start) and
    ||W - (Q + scaling B A)|| / ||W||."""
    import bitsandbytes.functional as bnbf
    import torch

    weight = weight.to(torch.float32)
    rounded = bnbf.dequantize_4bit(layer_weight.data, layer_weight.quant_state).to(torch.float32)
    residual = weight - rounded
    U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
    root = S[:rank].sqrt() / scaling ** 0.5
    B, A = U[:, :rank] * root, root[:, None] * Vh[:rank]
    norm = weight.norm()
    return A, B, (residual.norm() / norm).item(), ((residual - scaling * (B @ A)).norm() / norm).item()


def initialise(model, config) -> dict:
    """Starts every 4-bit LoRA layer's adapter of a fresh QLoRA peft model at its LoftQ fit (the base is untouched).

    Returns {"layers", "error_qlora", "error_loftq"}: the mean relative error of the starting weights without and
    with the adapter, for the log, run.json and the card."""
    import torch
    from peft.tuners.lora import Linear4bit

    from backend import models

    load = original_weights(Path(models.resolve(config.model).path))
    before, after = [], []
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, Linear4bit) or "default" not in module.lora_A:
                continue
            key = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            layer_weight = module.get_base_layer().weight
            A, B, error_q, error_l = fit_layer(load(key + ".weight").to(layer_weight.device), layer_weight,
                                               module.r["default"], module.scaling["default"])
            module.lora_A["default"].weight.data = A.to(module.lora_A["default"].weight.dtype)
            module.lora_B["default"].weight.data = B.to(module.lora_B["default"].weight.dtype)
            before.append(error_q)
            after.append(error_l)
    if not before:
        raise ValueError("loftq: the model has no 4-bit LoRA layers to initialise (is the base loaded in 4-bit?)")
    facts = {"layers": len(before), "error_qlora": round(sum(before) / len(before), 5),
             "error_loftq": round(sum(after) / len(after), 5)}
    log.info("LoftQ init: %d layers: mean relative weight error %.4f (QLoRA's start) -> %.4f with the adapter",
             facts["layers"], facts["error_qlora"], facts["error_loftq"])
    return facts
