"""The adapter registry: every adapter in the workspace as one entry with its provenance.

An adapter is a job: trained here (its run folder's run.json holds base, data, hyperparameters, results,
lineage), or made here without training (imported from a peft folder trained elsewhere, or composed of several
adapters: `importer.py`, `compose.py`), recorded as a completed job (`jobs.create_untrained`) whose run folder
holds `adapter/` and `adapter_entry.json` (origin, parents and their weights, the combination, where an import
came from). Being a job is what makes an imported or composed adapter first-class: the Playground, the
Evaluate tab, every export and the API server take a job id. Notes and tags of any entry live in the same file.

Deleting an adapter that a composition or a chained job (init_adapter) came from is refused with the names of
those adapters unless forced (`delete_problem`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from backend import jobs, workspace
from backend.jobs.card import read_run_facts
from backend.models import adapters

ENTRY_FILE = "adapter_entry.json"
ORIGINS = ("trained", "imported", "composed")


class RegistryError(ValueError):
    """One sentence for the user."""


@dataclass(frozen=True)
class Entry:
    id: str                       # the job id: what the Playground, exports and the API take
    name: str
    origin: str                   # trained | imported | composed
    status: str
    label: str                    # "final adapter" or "checkpoint-20 (job running)"
    path: Path                    # the peft folder
    base: str
    base_sha256: str | None
    method: str
    stage: str
    rank: int | None
    dataset: dict | None          # {"id", "sha256", "train_rows", ...} of a trained adapter
    hyperparameters: dict
    results: dict
    evaluation: dict | None       # the quality report's headline, when one ran
    lineage: list[str]
    init_adapter: str | None
    parents: list[dict]           # a composition's [{"id", "weight"}]
    combination: dict | None      # {"type", "density", ...} of a composition
    imported_from: str | None
    size_bytes: int
    created: float
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def entry_facts(job_id: str) -> dict:
    """The registry's own facts of an adapter ({} for a trained one without notes)."""
    try:
        return json.loads((workspace.run_dir(job_id) / ENTRY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_entry_facts(job_id: str, facts: dict) -> None:
    path = workspace.run_dir(job_id) / ENTRY_FILE
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(facts, indent=2), encoding="utf-8")
    staging.replace(path)


def entries(base: str | None = None, method: str | None = None, stage: str | None = None,
            tag: str | None = None, origin: str | None = None) -> list[Entry]:
    """Every adapter in the workspace (jobs with an adapter, final or a complete checkpoint), newest first,
    filtered by base, method, stage, tag and origin."""
    found = []
    for job in jobs.list_jobs():
        entry = _entry(job)
        if entry is None:
            continue
        if ((base and entry.base != base) or (method and entry.method != method) or (stage and entry.stage != stage)
                or (tag and tag not in entry.tags) or (origin and entry.origin != origin)):
            continue
        found.append(entry)
    return sorted(found, key=lambda e: e.created, reverse=True)


def get(adapter_id: str) -> Entry:
    job = jobs.get((adapter_id or "").strip())
    entry = _entry(job) if job else None
    if entry is None:
        raise RegistryError(f"no adapter '{adapter_id}' in this workspace: `lorastudio adapters list` shows them")
    return entry


def annotate(adapter_id: str, note: str | None = None, tags: list[str] | None = None) -> Entry:
    """Set an adapter's free note and / or tags (tags: lower case, no spaces, as given otherwise)."""
    get(adapter_id)
    facts = entry_facts(adapter_id)
    if note is not None:
        facts["note"] = note.strip()
    if tags is not None:
        cleaned = []
        for tag in tags:
            tag = tag.strip().lower()
            if not tag:
                continue
            if any(c.isspace() for c in tag) or "," in tag:
                raise RegistryError(f"tag '{tag}' has spaces or commas: use one word per tag, e.g. 'math'")
            cleaned.append(tag)
        facts["tags"] = sorted(set(cleaned))
    write_entry_facts(adapter_id, facts)
    return get(adapter_id)


def dependents(adapter_id: str) -> list[str]:
    """Adapters made from this one: compositions that name it as a parent, jobs chained on it (init_adapter)."""
    out = []
    for job in jobs.list_jobs():
        if job.id == adapter_id:
            continue
        parents = [p.get("id") for p in entry_facts(job.id).get("parents", [])]
        if adapter_id in parents:
            out.append(f"{job.id} (composed of it)")
        elif job.config.init_adapter == adapter_id:
            out.append(f"{job.id} (trained on from it)")
    return out


def delete_problem(adapter_id: str) -> str | None:
    """Why deleting this adapter needs a second thought, or None."""
    made = dependents(adapter_id)
    if made:
        return (f"adapter {adapter_id} is where {', '.join(made)} came from: their lineage keeps naming it, but its "
                "weights will be gone; delete anyway with --force (or the tab's confirmation)")
    return None


def describe(entry) -> str:
    """The entry as lines of text: `lorastudio adapters show` and the Adapters tab's card."""
    lines = [f"{entry.id}  {entry.name}".rstrip(), f"origin:      {entry.origin} ({entry.label}, {entry.status})",
             f"base:        {entry.base} (weights sha256 {(entry.base_sha256 or 'unknown')[:16]})",
             f"method:      {entry.method}, rank {entry.rank}, stage {entry.stage}",
             f"size:        {size_text(entry.size_bytes)} in {entry.path}"]
    if entry.dataset:
        data = entry.dataset
        lines.append(f"data:        {data.get('id')} (sha256 {str(data.get('sha256'))[:16]}, "
                     f"{data.get('train_rows', '?')} training rows)")
    if entry.imported_from:
        lines.append(f"imported:    from {entry.imported_from}")
    if entry.parents:
        combination = entry.combination or {}
        extra = "".join(f", {k} {v}" for k, v in combination.items() if k != "type" and v is not None)
        lines.append(f"composed:    {combination.get('type')}{extra} of "
                     + ", ".join(f"{p['id']} × {p['weight']:g}" for p in entry.parents))
    lines.append(f"lineage:     {' -> '.join(entry.lineage)}")
    lora = (entry.hyperparameters or {}).get("lora") or {}
    training = (entry.hyperparameters or {}).get("training") or {}
    if lora:
        lines.append("lora:        " + ", ".join(f"{k} {v}" for k, v in lora.items() if v is not None))
    if training:
        keys = ("max_steps", "epochs", "learning_rate", "batch_size", "max_length", "seed")
        lines.append("training:    " + ", ".join(f"{k} {training[k]}" for k in keys if k in training))
    if entry.results:
        shown = {k: v for k, v in entry.results.items() if isinstance(v, (int, float, str))}
        lines.append("results:     " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in list(shown.items())[:8]))
    if entry.evaluation:
        lines.append(f"evaluation:  {entry.evaluation.get('created')}: "
                     + "; ".join(entry.evaluation.get("lines", [])[:4]))
    if entry.note or entry.tags:
        lines.append(f"note:        {entry.note} {' '.join('#' + t for t in entry.tags)}".rstrip())
    return "\n".join(lines)


def size_text(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"


def _entry(job) -> Entry | None:
    try:
        source = adapters.adapter_source(job.id)
    except adapters.AdapterError:
        return None
    facts = read_run_facts(job.run_dir)
    own = entry_facts(job.id)
    config = job.config
    base = facts.get("base_model") or {}
    return Entry(
        id=job.id, name=job.name, origin=own.get("origin", "trained"), status=str(job.status), label=source.label,
        path=source.path, base=base.get("name") or config.model, base_sha256=base.get("weights_sha256"),
        method=str(config.method), stage=str(config.stage), rank=_rank(source.path),
        dataset=facts.get("dataset") if own.get("origin", "trained") == "trained" else None,
        hyperparameters=facts.get("hyperparameters") or {"lora": config.to_dict()["lora"]},
        results=facts.get("results") or job.results, evaluation=_evaluation(job.run_dir),
        lineage=[str(step) for step in facts.get("lineage") or own.get("lineage") or [config.model, job.id]],
        init_adapter=config.init_adapter, parents=own.get("parents", []), combination=own.get("combination"),
        imported_from=own.get("imported_from"), size_bytes=_size(source.path), created=job.created,
        note=own.get("note", ""), tags=tuple(own.get("tags", [])))


def _rank(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "adapter_config.json").read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _evaluation(run_dir: Path) -> dict | None:
    """The quality report's headline (backend/evaluate/report.py): when it ran, of what, one line per metric."""
    try:
        report = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    from backend.evaluate.report import summary_lines
    return {"created": report.get("created"), "adapter": report.get("adapter"), "lines": summary_lines(report)}
