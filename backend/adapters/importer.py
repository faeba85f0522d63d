"""Import a peft adapter folder trained elsewhere (a plain peft script, another studio) as a registry entry.

The folder must hold `adapter_config.json` and `adapter_model.safetensors` (never pickle). Its base is the one
named (`base`) or the registered model its config names (`base_model_name_or_path`: a registry name, a folder,
or the hub id a registered model came from). Before anything is recorded, the adapter is loaded onto that base
with peft: a tensor of the wrong shape or a layer the base does not have refuses the import in one sentence,
so an adapter of another base never enters the registry. LoRA and DoRA adapters can be imported.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from backend import jobs, models
from backend.adapters import Entry, RegistryError, get, write_entry_facts
from backend.config import JobConfig
from backend.jobs.card import library_versions

WEIGHTS = "adapter_model.safetensors"


def import_adapter(folder, base: str | None = None, name: str = "") -> Entry:
    folder = Path(folder).expanduser()
    config = _read_config(folder)
    info = _base_model(config, base, folder)
    method = "dora" if config.get("use_dora") else "lora"
    _check_on_base(folder, info)
    targets = config.get("target_modules") or "all-linear"
    job_config = JobConfig.from_dict({
        "model": info.name, "method": method, "name": name.strip() or f"imported {folder.name}"[:80],
        "lora": {"r": int(config.get("r", 8)), "alpha": float(config.get("lora_alpha", config.get("r", 8))),
                 "dropout": float(config.get("lora_dropout", 0.0)), "rslora": bool(config.get("use_rslora")),
                 "target_modules": sorted(targets) if isinstance(targets, (list, set)) else targets}})
    job = jobs.create_untrained(job_config, dataset_label=f"imported from {folder}")
    shutil.copytree(folder, job.run_dir / "adapter", ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pth"))
    lineage = [info.name, f"imported {folder.name}"]
    write_entry_facts(job.id, {"origin": "imported", "imported_from": str(folder.resolve()), "lineage": lineage})
    facts = {"job_id": job.id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "origin": "imported",
             "imported_from": str(folder.resolve()),
             "base_model": {"name": info.name, "path": info.path, "source": info.source,
                            "weights_sha256": info.weights_sha256 or "unknown"},
             "method": method, "stage": "sft", "results": {}, "lineage": lineage, "init_adapter": None,
             "hyperparameters": {"lora": job_config.to_dict()["lora"]}, "libraries": library_versions()}
    (job.run_dir / "run.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
    (job.run_dir / "card.md").write_text(
        f"# LoRA Studio adapter `{job.id}` (imported)\n\nA {method.upper()} adapter (rank {config.get('r')}) for "
        f"**{info.name}**, imported from `{folder.resolve()}`: trained elsewhere, so its data and training "
        "settings are not known here.\n", encoding="utf-8")
    return get(job.id)


def _read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise RegistryError(f"'{folder}' is not a folder: point at the peft adapter folder (the one holding "
                            "adapter_config.json)")
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise RegistryError(f"'{folder}' has no adapter_config.json: it is not a peft adapter folder "
                            "(save one with model.save_pretrained(folder))") from None
    except ValueError as error:
        raise RegistryError(f"{folder / 'adapter_config.json'} is not valid JSON ({error})") from None
    if not (folder / WEIGHTS).is_file():
        pickled = [p.name for p in folder.glob("adapter_model.*")]
        raise RegistryError(f"'{folder}' has no {WEIGHTS}" + (
            f" (only {', '.join(pickled)}: pickle files are not loaded; save with safe_serialization=True)"
            if pickled else ""))
    if config.get("peft_type") != "LORA":
        raise RegistryError(f"the adapter in '{folder}' is {config.get('peft_type', 'of no known peft type')}: only "
                            "LoRA and DoRA adapters can be imported")
    return config


def _base_model(config: dict, base: str | None, folder: Path):
    """The registered model the adapter belongs on. Nothing is downloaded or imported as a side effect: a
    hub id or a folder must match a model already in the workspace."""
    named = base or config.get("base_model_name_or_path")
    if not named:
        raise RegistryError(f"the adapter in '{folder}' does not name its base model: give it with --base MODEL")
    registered = models.list_models()
    for info in registered:
        if named == info.name:
            return models.resolve(info.name)
    as_path = Path(named).expanduser()
    for info in registered:
        same_folder = as_path.exists() and Path(info.path).exists() and as_path.resolve() == Path(info.path).resolve()
        if same_folder or named in (info.source, f"folder: {named}") or info.source.endswith(f" {named}"):
            return models.resolve(info.name)
    raise RegistryError(f"the adapter was trained on '{named}', which is not a model in this workspace: import "
                        "that model first (`lorastudio models import`) or name its base with --base MODEL")


def _check_on_base(folder: Path, info) -> None:
    """Load the adapter onto the base with peft: every tensor must land on a layer of the right shape."""
    import torch
    from peft import PeftModel
    from safetensors import safe_open

    base = models.load_model(info.name, dtype=torch.float32)
    try:
        model = PeftModel.from_pretrained(base, str(folder))
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()
        raise RegistryError(f"the adapter in '{folder}' does not fit base model '{info.name}': "
                            f"{first[-1][:240] if first else type(error).__name__}") from None
    with safe_open(str(folder / WEIGHTS), framework="pt") as weights:
        wanted = set(weights.keys())
    loaded = {name.replace(".default", "") for name in model.state_dict() if "lora_" in name}
    missing = sorted(name for name in wanted if "lora_" in name and name not in loaded)
    if missing:
        raise RegistryError(f"the adapter in '{folder}' has {len(missing)} tensors for layers base model "
                            f"'{info.name}' does not have (e.g. {missing[0]}): it was trained on another base")
