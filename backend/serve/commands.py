"""The same adapters served by other engines: the exact command lines the Serve tab shows.

- vLLM (CUDA): `vllm serve BASE --enable-lora --lora-modules JOB=ADAPTER ...`; a request then names a job id
  as its model, as with the studio's own server. vLLM takes only certain maximum ranks, so the smallest one
  that holds every adapter is given.
- llama.cpp's server, for jobs exported as "lora-gguf": the base F16 GGUF once and each adapter with --lora,
  loaded but not applied (`--lora-init-without-apply`); a request picks adapters by their index in its
  `lora` field.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from backend import workspace

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vLLM's accepted --max-lora-rank values


@dataclass(frozen=True)
class EngineCommand:
    engine: str
    command: str | None       # None: cannot be made for these adapters (why says why)
    why: str                  # where it runs, or why there is no command


def vllm(model_path: Path, adapters: dict[str, Path]) -> EngineCommand:
    """`adapters`: job id -> its PEFT adapter folder."""
    if not adapters:
        return EngineCommand("vLLM", None, "pick at least one adapter")
    ranks = [_rank(path) for path in adapters.values()]
    if None in ranks:
        return EngineCommand("vLLM", None, "vLLM serves LoRA adapters only; one of these is another method")
    rank = next((r for r in VLLM_MAX_LORA_RANKS if r >= max(ranks)), None)
    if rank is None:
        return EngineCommand("vLLM", None, f"rank {max(ranks)} is above the largest vLLM serves (512)")
    parts = ["vllm", "serve", str(model_path), "--enable-lora", "--max-lora-rank", str(rank),
             "--max-loras", str(len(adapters)), "--lora-modules",
             *(f"{name}={path}" for name, path in adapters.items())]
    return EngineCommand("vLLM", shlex.join(parts), _where_vllm_runs())


def llama_server(job_ids: list[str]) -> EngineCommand:
    """llama.cpp's server over the jobs' lora-gguf exports, when they share one base GGUF."""
    if not job_ids:
        return EngineCommand("llama.cpp", None, "pick at least one adapter")
    loras, bases, missing = [], set(), []
    for job_id in job_ids:
        folder = workspace.exports_dir() / job_id / f"{job_id}-lora-gguf"
        lora = folder / f"{job_id}-lora-f16.gguf"
        if not lora.is_file():
            missing.append(job_id)
            continue
        loras.append(lora)
        bases.update(path.name for path in folder.glob("*.gguf") if path != lora)
    if missing:
        return EngineCommand("llama.cpp", None, f"export {', '.join(missing)} as \"LoRA GGUF\" first (Export tab or "
                                                f"`lorastudio export JOB --lora-gguf`)")
    if len(bases) != 1:
        return EngineCommand("llama.cpp", None, "these exports carry different base models: serve them apart")
    base = next(iter(bases))
    parts = ["llama-server", "-m", str(loras[0].parent / base)]
    for lora in loras:
        parts += ["--lora", str(lora)]
    parts += ["--lora-init-without-apply", "--port", "8080"]
    order = ", ".join(f"{i} = {job_id}" for i, job_id in enumerate(job_ids))
    return EngineCommand("llama.cpp", shlex.join(parts),
                         f"a request picks its adapter with \"lora\": [{{\"id\": N, \"scale\": 1.0}}] ({order})")


def _rank(adapter: Path) -> int | None:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return int(config["r"]) if config.get("peft_type") == "LORA" and "r" in config else None


def _where_vllm_runs() -> str:
    import torch
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vLLM is installed here and a CUDA device is present: the command runs on this machine"
    return "runs on a machine with an NVIDIA GPU and vLLM (`pip install vllm`); not on this one"
