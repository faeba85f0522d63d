"""Compose several adapters of one base into a new one, without training: peft's `add_weighted_adapter`.

The combination types are peft's: linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune (TIES and
DARE prune each adapter's update to `density` before they are summed; DARE's pruning is random, so it runs under
a recorded seed). The parents are loaded onto the base in full precision, combined by peft, and the result is
saved as a plain peft adapter folder in a new registry entry (a completed job, `jobs.create_untrained`) whose
lineage records the parents, their weights, the type, the density and the seed.

What cannot be composed is refused before anything loads, each in one sentence: fewer than two adapters,
adapters of different bases, adapters that are not LoRA (prompt tuning, IA3, ...) or are DoRA (peft combines
the low-rank matrices, not DoRA's magnitude vectors), different ranks for a type that sums the matrices
(linear, ties, dare_*, magnitude_prune: use cat or svd), weights or a density that do not fit.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from backend import jobs
from backend.adapters import Entry, RegistryError, get, write_entry_facts
from backend.jobs.card import library_versions, read_run_facts

# type -> (needs equal ranks, takes a density)
COMBINATIONS = {"linear": (True, False), "cat": (False, False), "svd": (False, False), "ties": (True, True),
                "dare_linear": (True, True), "dare_ties": (True, True), "magnitude_prune": (True, True)}
COMBINATION_HELP = {
    "linear": "a weighted sum of the adapters' matrices (equal ranks)",
    "cat": "the adapters side by side: exact weighted sum of their updates; rank = the sum of the ranks",
    "svd": "the weighted sum of the updates, re-factored to the largest rank by SVD (slower, any ranks)",
    "ties": "TIES: keep each adapter's largest `density` share, elect a sign per weight, average agreeing ones",
    "dare_linear": "DARE: drop a random (1 - density) share of each update, rescale, then sum",
    "dare_ties": "DARE's random drop, then TIES' sign election",
    "magnitude_prune": "keep each update's largest `density` share, then sum",
}
DEFAULT_DENSITY = 0.5
COMPOSED_NAME = "composed"


@dataclass(frozen=True)
class Composition:
    parents: tuple[str, ...]
    weights: tuple[float, ...]
    combination: str = "linear"
    density: float | None = None       # ties / dare_* / magnitude_prune (default DEFAULT_DENSITY)
    name: str = ""
    seed: int = 0                      # DARE's random drop


def check(spec: Composition) -> list[Entry]:
    """The parents' entries, or RegistryError with the first reason the composition cannot be made."""
    if len(spec.parents) < 2:
        raise RegistryError("pick at least two adapters to compose")
    if len(set(spec.parents)) != len(spec.parents):
        raise RegistryError("an adapter is named twice: name each once and give it the combined weight")
    if spec.combination not in COMBINATIONS:
        raise RegistryError(f"combination '{spec.combination}' is not one of {', '.join(COMBINATIONS)}")
    if len(spec.weights) != len(spec.parents):
        raise RegistryError(f"{len(spec.parents)} adapters need {len(spec.parents)} weights, not "
                            f"{len(spec.weights)}")
    if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in spec.weights) or not any(spec.weights):
        raise RegistryError("weights must be finite numbers, not all zero (e.g. 0.5 0.5)")
    equal_ranks, takes_density = COMBINATIONS[spec.combination]
    if spec.density is not None:
        if not takes_density:
            raise RegistryError(f"density applies to ties, dare_linear, dare_ties and magnitude_prune, not "
                                f"{spec.combination}: leave it out")
        if not 0 < spec.density <= 1:
            raise RegistryError(f"density is the share of each update kept: from 0 (exclusive) to 1, not "
                                f"{spec.density}")
    parents = [get(parent) for parent in spec.parents]
    first = parents[0]
    for other in parents[1:]:
        if other.base != first.base or (other.base_sha256 and first.base_sha256
                                         and other.base_sha256 != first.base_sha256):
            raise RegistryError(f"adapters {first.id} and {other.id} were trained on different base models "
                                f"({first.base} vs {other.base}): compose adapters of one base")
    for parent in parents:
        config = _adapter_config(parent)
        if config.get("peft_type") != "LORA":
            raise RegistryError(f"adapter {parent.id} is {config.get('peft_type', 'not a peft adapter')}, not LoRA: "
                                "peft composes LoRA adapters only")
        if config.get("use_dora"):
            raise RegistryError(f"adapter {parent.id} is DoRA: peft's weighted merge combines the low-rank "
                                "matrices but not DoRA's magnitude vectors, so the result would be wrong")
    ranks = {parent.id: parent.rank for parent in parents}
    if equal_ranks and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{k} r={v}" for k, v in ranks.items())
        raise RegistryError(f"{spec.combination} sums the adapters' matrices, so it needs equal ranks ({listed}): "
                            "use cat or svd for adapters of different ranks")
    return parents


def compose(spec: Composition, progress=None) -> Entry:
    """Make the composed adapter and its registry entry; returns the entry."""
    import torch
    from peft import PeftModel

    from backend import models

    progress = progress or (lambda fraction, text: None)
    parents = check(spec)
    started = time.monotonic()
    progress(0.1, "loading the base model and the adapters")
    base = models.load_model(parents[0].base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(parents[0].path), adapter_name=parents[0].id)
    for parent in parents[1:]:
        model.load_adapter(str(parent.path), adapter_name=parent.id)
    progress(0.5, f"combining ({spec.combination})")
    density = (spec.density or DEFAULT_DENSITY) if COMBINATIONS[spec.combination][1] else None
    torch.manual_seed(spec.seed)
    model.add_weighted_adapter(adapters=[p.id for p in parents], weights=list(spec.weights),
                               adapter_name=COMPOSED_NAME, combination_type=spec.combination,
                               **({"density": density} if density is not None else {}))

    progress(0.8, "saving the composed adapter")
    parent_job = jobs.get(parents[0].id)
    mix = " + ".join(f"{p.id}×{w:g}" for p, w in zip(parents, spec.weights))
    name = spec.name.strip() or f"{spec.combination} of {' + '.join(p.name or p.id for p in parents)}"[:80]
    config = replace(parent_job.config, name=name, init_adapter=None)
    job = jobs.create_untrained(config, dataset_label=f"composed: {mix} ({spec.combination})")
    staging = job.run_dir / ".composed"
    model.save_pretrained(str(staging), selected_adapters=[COMPOSED_NAME])
    saved = staging / COMPOSED_NAME if (staging / COMPOSED_NAME).is_dir() else staging
    _copy_tokenizer(parents[0].path, saved)
    saved.rename(job.run_dir / "adapter")
    shutil.rmtree(staging, ignore_errors=True)

    combination = {"type": spec.combination, "density": density,
                   "seed": spec.seed if spec.combination.startswith("dare") else None}
    parent_list = [{"id": p.id, "name": p.name, "weight": w} for p, w in zip(parents, spec.weights)]
    lineage = [parents[0].base, f"compose {spec.combination}({mix})"]
    write_entry_facts(job.id, {"origin": "composed", "parents": parent_list, "combination": combination,
                               "lineage": lineage})
    _write_facts(job, parents, parent_list, combination, lineage, time.monotonic() - started)
    progress(1.0, "done")
    return get(job.id)


def _adapter_config(entry: Entry) -> dict:
    try:
        return json.loads((entry.path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}


def _copy_tokenizer(source: Path, target: Path) -> None:
    """The first parent's tokenizer and chat template travel with the adapter, as a trained adapter's do."""
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith(("adapter_", "README")):
            shutil.copy2(path, target / path.name)


def _write_facts(job, parents: list[Entry], parent_list: list, combination: dict, lineage: list,
                 seconds: float) -> None:
    """run.json and card.md of the composed adapter, in the shape of a trained one's."""
    first = read_run_facts(jobs.get(parents[0].id).run_dir)
    rank = json.loads((job.run_dir / "adapter" / "adapter_config.json").read_text()).get("r")
    facts = {"job_id": job.id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "origin": "composed",
             "base_model": first.get("base_model") or {"name": parents[0].base},
             "method": parents[0].method, "stage": parents[0].stage, "parents": parent_list,
             "combination": combination, "results": {"compose_seconds": round(seconds, 2)}, "lineage": lineage,
             "init_adapter": None, "hyperparameters": {"lora": {"r": rank, "alpha": rank}},
             "libraries": library_versions()}
    (job.run_dir / "run.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
    rows = "\n".join(f"| {p['id']} | {p['name'] or ''} | {p['weight']:g} |" for p in parent_list)
    (job.run_dir / "card.md").write_text(
        f"# LoRA Studio adapter `{job.id}` (composed)\n\n"
        f"Composed without training from {len(parent_list)} adapters of **{facts['base_model']['name']}** with "
        f"peft's `add_weighted_adapter` ({combination['type']}"
        + (f", density {combination['density']:g}" if combination["density"] else "")
        + (f", seed {combination['seed']}" if combination["seed"] is not None else "") + f"); rank {rank}.\n\n"
        f"| parent | name | weight |\n| --- | --- | --- |\n{rows}\n\nLineage: {' -> '.join(lineage)}.\n",
        encoding="utf-8")
