"""LoftQ: a QLoRA adapter that starts by cancelling the 4-bit quantisation error (Li et al., 2023).

QLoRA starts from Q(W), the NF4-rounded weights, with a zero adapter: the model starts off by the rounding error.
LoftQ alternates, per target layer, `iterations` times:
    Q  = NF4(W - B A)             the base layer holds what the adapter does not
    BA = best rank-r fit of W - Q   (SVD) the adapter holds the largest part of the rounding error
so base + adapter starts close to W. After one round Q is plain QLoRA's base and BA its error's top-r part; more
rounds trade a little of the base's fit for a better sum.

Why by hand: peft 0.21's two LoftQ paths (`LoftQConfig` + init_lora_weights="loftq", and
`replace_lora_weights_loftq`) compute on "cuda" unconditionally (loftq_utils.py: compute_device = "cuda",
AssertionError "Torch not compiled with CUDA enabled" on this machine). This is the same algorithm on whatever
device the layer is on, with bitsandbytes' own NF4 quantiser (the same settings the layer was quantised with, so
Q is exactly what the 4-bit layer computes with) and torch's SVD.

The adapter's scaling (alpha / r) is divided out, so scaling x B A is the fit (peft's path assumes alpha = r).
Because the base layers change, the job saves its initial adapter and converts the final one at save against it
(methods.converts_at_save, as PiSSA): the saved adapter is a plain LoRA of twice the rank for the ORIGINAL,
full-precision weights W, which the playground, merge and exports load.
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


def _nf4_round_trip(weight, layer_weight):
    """Quantise `weight` as the 4-bit layer's own weight was (block size, double quant, storage) and dequantise."""
    import bitsandbytes.functional as bnbf

    state = layer_weight.quant_state
    packed, new_state = bnbf.quantize_4bit(weight, blocksize=state.blocksize, compress_statistics=bool(state.nested),
                                           quant_type=state.quant_type, quant_storage=layer_weight.quant_storage)
    return packed, new_state, bnbf.dequantize_4bit(packed, new_state)


def fit_layer(weight, layer_weight, rank: int, scaling: float, iterations: int):
    """LoftQ on one weight matrix: (packed 4-bit data, its quant state, A, B, error before, error after).

    Errors are relative Frobenius norms ||W - (Q + scaling B A)|| / ||W||; "before" is plain QLoRA's ||W - Q(W)||."""
    import torch

    weight = weight.to(torch.float32)
    norm = weight.norm()
    target, before = weight, None
    for _ in range(iterations):
        packed, state, rounded = _nf4_round_trip(target, layer_weight)
        residual = weight - rounded
        if before is None:
            before = (residual.norm() / norm).item()
        U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
        root = S[:rank].sqrt() / scaling ** 0.5
        B, A = U[:, :rank] * root, root[:, None] * Vh[:rank]
        target = weight - scaling * (B @ A)
    after = ((residual - scaling * (B @ A)).norm() / norm).item()
    return packed, state, A, B, before, after


def initialise(model, config) -> dict:
    """Rewrites every 4-bit LoRA layer of a fresh QLoRA peft model with LoftQ: its base data and its adapter.

    Returns {"layers", "error_qlora", "error_loftq"}: the mean relative error of the starting weights without and
    with the adapter, for the log, run.json and the card."""
    import torch
    from peft.tuners.lora import Linear4bit

    from backend import models

    load = original_weights(Path(models.resolve(config.model).path))
    iterations = config.loftq.iterations
    before, after = [], []
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, Linear4bit) or "default" not in module.lora_A:
                continue
            key = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            layer_weight = module.get_base_layer().weight
            packed, state, A, B, error_q, error_l = fit_layer(
                load(key + ".weight").to(layer_weight.device), layer_weight, module.r["default"],
                module.scaling["default"], iterations)
            layer_weight.data = packed
            layer_weight.quant_state = state
            module.lora_A["default"].weight.data = A.to(module.lora_A["default"].weight.dtype)
            module.lora_B["default"].weight.data = B.to(module.lora_B["default"].weight.dtype)
            before.append(error_q)
            after.append(error_l)
    if not before:
        raise ValueError("loftq: the model has no 4-bit LoRA layers to initialise (is the base loaded in 4-bit?)")
    facts = {"layers": len(before), "iterations": iterations,
             "error_qlora": round(sum(before) / len(before), 5), "error_loftq": round(sum(after) / len(after), 5)}
    log.info("LoftQ init: %d layers, %d iteration(s): mean relative weight error %.4f (QLoRA) -> %.4f (LoftQ)",
             facts["layers"], iterations, facts["error_qlora"], facts["error_loftq"])
    return facts
