"""Pre-flight memory estimate, shown in the Train tab before a job starts.

estimate(config) -> Estimate: base weights by method and bits + adapter (weights, grads, AdamW states) +
activations for batch x length (+ logits), in bytes, and a fits / tight / will-not-fit verdict per device.
Pure arithmetic from the model's config.json: no torch import, no weights loaded. It is an estimate
(typically within about 25% of the peak the trainer reaches); the badge leaves that margin.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024 ** 3
TIGHT_AT = 0.80           # above this share of a device's memory: "tight"
OVERHEAD_BYTES = 0.5 * GIB  # framework / allocator / CUDA context


@dataclass
class Estimate:
    weights: float
    adapter: float
    optimizer: float
    activations: float
    overhead: float
    adapter_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.adapter + self.optimizer + self.activations + self.overhead


@dataclass
class Device:
    name: str
    total_bytes: float


def _dims(model_path: str | None, parameters: int) -> dict:
    """Architecture numbers from config.json, or rough ones from the parameter count."""
    cfg = {}
    if model_path and Path(model_path, "config.json").is_file():
        try:
            cfg = json.loads(Path(model_path, "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or 0
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0
    if not hidden or not layers:
        # a llama-like shape with params ~ 12 x layers x hidden^2
        params = parameters or 135_000_000
        layers = layers or 30
        hidden = hidden or int((params / (12 * layers)) ** 0.5)
    heads = cfg.get("num_attention_heads") or max(hidden // 64, 1)
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    return {"hidden": hidden, "layers": layers, "inter": cfg.get("intermediate_size") or 4 * hidden,
            "kv": kv_heads * head_dim, "vocab": cfg.get("vocab_size") or 32000,
            "params": parameters or 12 * layers * hidden * hidden}


def adapter_parameters(dims: dict, r: int, target_modules) -> int:
    h, i, kv, n = dims["hidden"], dims["inter"], dims["kv"], dims["layers"]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    if target_modules == "all-linear":
        names = list(shapes)
    elif target_modules == "attention":
        names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    else:
        names = [m for m in (target_modules or []) if m in shapes] or ["q_proj", "v_proj"]
    return n * sum(r * (a + b) for a, b in (shapes[m] for m in names))


def estimate(config, model_path: str | None = None, parameters: int = 0, cuda: bool = False) -> Estimate:
    """Memory for one device (data-parallel jobs: each device holds all of this)."""
    dims = _dims(model_path, parameters)
    t = config.training
    bits = 4.5 if config.method in ("qlora", "qdora") else (16 if cuda and t.precision != "fp32" else 32)
    if t.precision == "fp32":
        bits = 4.5 if config.method in ("qlora", "qdora") else 32
    compute_bytes = 2 if (cuda and t.precision != "fp32") else 4
    weights = dims["params"] * bits / 8
    n_adapter = adapter_parameters(dims, config.lora.r, config.lora.target_modules)
    if config.method in ("dora", "qdora"):
        n_adapter += dims["layers"] * 7 * dims["hidden"]     # magnitude vectors (approx.)
    adapter = n_adapter * 4 * 2                  # fp32 weights + grads
    optimizer = n_adapter * 4 * 2                # AdamW: two fp32 states
    tokens = t.batch_size * t.max_length
    per_layer = (2 if t.gradient_checkpointing else 34) * dims["hidden"] * compute_bytes / 2
    activations = tokens * dims["layers"] * per_layer
    if t.gradient_checkpointing:
        activations += tokens * 34 * dims["hidden"] * compute_bytes / 2   # one layer recomputed
    activations += tokens * dims["vocab"] * 4 * 2    # logits + their gradient in fp32
    notes = []
    if config.stage in ("dpo", "kto"):
        activations *= 2
        notes.append("preference stages run chosen and rejected (or reference) passes: activations doubled")
    if config.method == "pissa":
        notes.append("PiSSA runs an SVD of each weight at start (brief extra memory)")
    return Estimate(weights=weights, adapter=adapter, optimizer=optimizer, activations=activations,
                    overhead=OVERHEAD_BYTES, adapter_params=n_adapter, notes=notes)


def devices() -> list[Device]:
    """Each CUDA GPU (via nvidia-smi, no torch import) or else this machine's RAM."""
    found = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.strip().splitlines():
                index, name, mib = [p.strip() for p in line.split(",")]
                found.append(Device(f"GPU {index}: {name}", float(mib) * 1024 * 1024))
        except (OSError, ValueError, subprocess.SubprocessError):
            found = []
    if not found:
        found.append(Device("CPU (system RAM)", _ram_bytes()))
    return found


def _ram_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def verdict(total: float, device: Device) -> str:
    if total > device.total_bytes:
        return "will not fit"
    if total > TIGHT_AT * device.total_bytes:
        return "tight"
    return "fits"
