"""The model card written next to every adapter: provenance a reader can trust months later."""
from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def read_card_facts(path: Path) -> dict:
    """The YAML facts block of a card.md ({} when the card is missing or has none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    start = text.find("```yaml\n")
    end = text.find("```", start + 8)
    if start < 0 or end < 0:
        return {}
    try:
        return yaml.safe_load(text[start + 8:end]) or {}
    except yaml.YAMLError:
        return {}


def lineage_for(config, model_info, job_id: str) -> list[str]:
    """base -> every job the adapter was trained through -> this job, e.g. [smollm2, "sft job-a", "dpo job-b"].

    A chained job (init_adapter) extends the lineage recorded in the card of the job it starts from.
    """
    own = f"{config.stage} {job_id}"
    if not config.init_adapter:
        return [model_info.name, own]
    from backend import workspace
    parent = read_card_facts(workspace.run_dir(config.init_adapter) / "card.md")
    chain = parent.get("lineage") or [model_info.name, f"{parent.get('stage', 'adapter')} {config.init_adapter}"]
    return [str(step) for step in chain] + [own]


def write_card(path: Path, *, job_id: str, config, model_info, dataset, rows: dict, results: dict,
               lineage: list[str] | None = None) -> str:
    """Write card.md (Markdown with a YAML block of the facts) and return its text."""
    facts = {
        "job_id": job_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"name": model_info.name, "source": model_info.source,
                       "architecture": model_info.architecture, "parameters": model_info.parameters,
                       "weights_sha256": model_info.weights_sha256 or "unknown (hub model)"},
        "method": config.method,
        "stage": config.stage,
        "dataset": {"id": dataset.id, "sha256": dataset.content_hash, **rows},
        "results": results,
        "lineage": lineage or lineage_for(config, model_info, job_id),
        "init_adapter": config.init_adapter,
        "hyperparameters": {"lora": config.to_dict()["lora"], "training": config.to_dict()["training"]},
        "chat_template": config.chat_template or "the base model's own (saved with the adapter)",
        "libraries": library_versions(),
    }
    if config.stage != "sft":
        facts["hyperparameters"]["alignment"] = config.to_dict()["alignment"]
    final = results.get("final_train_loss")
    text = (
        f"# LoRA Studio adapter `{job_id}`\n\n"
        f"{config.method.upper()} adapter ({config.stage.upper()}) for **{model_info.name}**, trained on dataset "
        f"`{dataset.id}` ({rows.get('train_rows')} training rows) for {results.get('steps')} steps"
        f"{'' if final is None else f', final train loss {final:.4f}'}.\n\n"
        f"Lineage: {' -> '.join(facts['lineage'])}.\n\n"
        "Load it with `peft.PeftModel.from_pretrained(base_model, this_folder)`; the tokenizer in this folder "
        "carries the chat template used in training.\n\n"
        "## Provenance\n\n```yaml\n" + yaml.safe_dump(facts, sort_keys=False) + "```\n"
    )
    Path(path).write_text(text, encoding="utf-8")
    return text
