"""The run's facts: run.json (machine-readable: lineage, base model hash, data hash, results) and card.md, the
model card rendered from the same facts, written next to every adapter: provenance a reader can trust months
later, and the one place later stages, exports and comparisons read a run's lineage from.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
RUN_FACTS = "run.json"


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def read_run_facts(run_dir: Path) -> dict:
    """The facts of a finished run ({} when it has none yet).

    Runs trained before run.json existed carry the same facts only as the YAML block of their card.md.
    """
    run_dir = Path(run_dir)
    try:
        return json.loads((run_dir / RUN_FACTS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _card_yaml_block(run_dir / "card.md")
    except ValueError:
        return {}


def _card_yaml_block(path: Path) -> dict:
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

    A chained job (init_adapter) extends the lineage recorded by the job it starts from.
    """
    own = f"{config.stage} {job_id}"
    if not config.init_adapter:
        return [model_info.name, own]
    from backend import workspace
    parent = read_run_facts(workspace.run_dir(config.init_adapter))
    chain = parent.get("lineage") or [model_info.name, f"{parent.get('stage', 'adapter')} {config.init_adapter}"]
    return [str(step) for step in chain] + [own]


def run_facts(*, job_id: str, config, model_info, dataset, rows: dict, results: dict) -> dict:
    """What run.json holds: plain JSON values only."""
    settings = config.to_dict()
    facts = {
        "job_id": job_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"name": model_info.name, "path": model_info.path, "source": model_info.source,
                       "architecture": model_info.architecture, "parameters": model_info.parameters,
                       "weights_sha256": model_info.weights_sha256 or "unknown (hub model)"},
        "method": settings["method"],
        "stage": settings["stage"],
        "optimizer": optimizer_text(config),
        "dataset": {"id": dataset.id, "sha256": dataset.content_hash, **rows},
        "results": results,
        "lineage": lineage_for(config, model_info, job_id),
        "init_adapter": config.init_adapter,
        "hyperparameters": {"lora": settings["lora"], "training": settings["training"]},
        "chat_template": config.chat_template or "the base model's own (saved with the adapter)",
        "thinking": "template default" if config.thinking is None else ("on" if config.thinking else "off"),
        "libraries": library_versions(),
    }
    if config.stage.is_preference:
        facts["hyperparameters"]["alignment"] = settings["alignment"]
    return facts


def optimizer_text(config) -> str:
    """training.optim as the card says it, with LoRA+ when it wraps it (e.g. "adamw_8bit with LoRA+ ratio 16")."""
    ratio = config.lora.loraplus_ratio
    return config.training.optim + (f" with LoRA+ ratio {ratio:g}" if ratio else "")


USAGE_PROMPT = "Who are you?"


def usage_python(kind: str, folder: str = ".", base: str | None = None, gguf_file: str | None = None) -> str:
    """A fenced Python snippet that loads a card's weights with plain transformers (and peft for an adapter) and
    answers one chat turn; tests run every card's snippet against the real files (tests/backend/export).

    kind: "adapter" (PEFT folder on `base`), "merged" (a plain model folder), "gguf" (transformers' GGUF loader,
    `pip install gguf`); folder: where the files are, as the reader sees it from the card's folder."""
    if kind == "adapter":
        load = (f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"base = AutoModelForCausalLM.from_pretrained({base!r})  # the base model: its folder or hub id\n"
                f"model = PeftModel.from_pretrained(base, {folder!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r})  # carries the training chat template\n")
    elif kind == "merged":
        load = (f"from transformers import AutoModelForCausalLM, AutoTokenizer  # no peft needed: merged weights\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({folder!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r})\n")
    elif kind == "gguf":
        load = (f"from transformers import AutoModelForCausalLM, AutoTokenizer  # needs `pip install gguf`\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({folder!r}, gguf_file={gguf_file!r})  # de-quantised\n"
                f"tokenizer = AutoTokenizer.from_pretrained({folder!r}, gguf_file={gguf_file!r})\n")
    else:
        raise ValueError(f"no usage snippet for '{kind}'")
    run = (f"messages = [{{\"role\": \"user\", \"content\": {USAGE_PROMPT!r}}}]\n"
           "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",\n"
           "                                       return_dict=True)\n"
           "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)\n"
           "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n")
    return f"```python\n{load}\n{run}```\n"


USE_HEADING = "## Use"


def _mix_text(mix: list | None, unit: str) -> str:
    """The datasets mixed into the training rows, each with its share and rows (run.json's dataset.mix)."""
    if not mix:
        return ""
    parts = [f"`{m['name']}` ({m['id']}): {m['rows']} {unit}, {m['share'] * 100:g} %"
             + (" (cycled through more than once)" if m.get("repeated") else "") for m in mix]
    warnings = "".join(f"Warning: {m['warning']}.\n\n" for m in mix if m.get("warning"))
    return f"Mixed into the training {unit}: {'; '.join(parts)}.\n\n{warnings}"


def render_card(facts: dict) -> str:
    """card.md: a short description, then the facts as a YAML block."""
    results = facts["results"]
    final = results.get("final_train_loss")
    unit = "blocks" if facts["stage"] == "pretrain" else "rows"     # pretrain trains on packed blocks of text
    perplexity = results.get("eval_perplexity")
    held_out = "" if perplexity is None else f", held-out perplexity {perplexity:.2f}"
    return (
        f"# LoRA Studio adapter `{facts['job_id']}`\n\n"
        f"{facts['method'].upper()} adapter ({facts['stage'].upper()}) for **{facts['base_model']['name']}**, "
        f"trained on dataset `{facts['dataset']['id']}` ({facts['dataset'].get('train_rows')} training {unit}) for "
        f"{results.get('steps')} steps{'' if final is None else f', final train loss {final:.4f}'}{held_out}"
        f"{'' if not facts.get('optimizer') else ', optimizer ' + facts['optimizer']}.\n\n"
        + _mix_text(facts["dataset"].get("mix"), unit) +
        f"Lineage: {' -> '.join(facts['lineage'])}.\n\n"
        + _ranks_text(facts.get("adapter_ranks")) + _galore_text(results) + _loftq_text(results) +
        f"{USE_HEADING}\n\nThe adapter is in `adapter/` next to this card. Load it with peft on its base model "
        "(run from this folder):\n\n"
        + usage_python("adapter", "adapter", facts["base_model"].get("path") or facts["base_model"]["name"])
        + "\n## Provenance\n\n```yaml\n" + yaml.safe_dump(facts, sort_keys=False) + "```\n"
    )


def adapter_ranks(adapter_dir: Path) -> dict:
    """The final rank of each adapted module when a method chose them (AdaLoRA's rank_pattern), as
    {"layer N": {"q_proj": 3, ...}}; {} otherwise."""
    try:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    pattern = config.get("rank_pattern") or {}
    ranks: dict = {}
    for name, value in pattern.items():
        rank = sum(value) if isinstance(value, list) else int(value)     # AdaLoRA keeps a mask: its ones count
        parts = name.split(".")
        layer = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "layers"), "?")
        module = next((p for p in reversed(parts) if p not in ("default", "lora_E", "weight")), name)
        ranks.setdefault(f"layer {layer}", {})[module] = rank
    return ranks


def _ranks_text(ranks: dict | None) -> str:
    if not ranks:
        return ""
    lines = [f"- {layer}: " + ", ".join(f"{m} {r}" for m, r in modules.items()) for layer, modules in ranks.items()]
    total = sum(r for modules in ranks.values() for r in modules.values())
    return f"Final ranks chosen during training ({total} in all):\n\n" + "\n".join(lines) + "\n\n"


def _galore_text(results: dict) -> str:
    """GaLore trained the base's layers themselves: how their change was saved as a LoRA adapter, and how exactly."""
    if "galore_reconstruction_error" not in results:
        return ""
    return (f"Trained with GaLore (the layers themselves at full rank, the optimizer state at low rank); their change "
            f"is saved as a LoRA adapter of rank {results['galore_adapter_rank']}, relative reconstruction error "
            f"{results['galore_reconstruction_error']:.3g} (||D - BA|| / ||D|| over {results['galore_trained_layers']} "
            "layers).\n\n")


def _loftq_text(results: dict) -> str:
    """LoftQ's start: how much of the 4-bit rounding error the initial adapter took away."""
    if "loftq_error_loftq" not in results:
        return ""
    return (f"Started with LoftQ over {results['loftq_layers']} layers: the 4-bit base's mean relative weight error "
            f"{results['loftq_error_qlora']:.4f} (plain QLoRA's start) became {results['loftq_error_loftq']:.4f} with "
            "the initial adapter. The base is the plain 4-bit load, so the adapter plays on it as it trained.\n\n")


def write_run(run_dir: Path, **facts_of) -> dict:
    """Write run.json and card.md (rendered from it) into the run folder; returns the facts."""
    run_dir = Path(run_dir)
    facts = run_facts(**facts_of)
    ranks = adapter_ranks(run_dir / "adapter")
    if ranks:
        facts["adapter_ranks"] = ranks
    staging = run_dir / f".{RUN_FACTS}.tmp"
    staging.write_text(json.dumps(facts, indent=2), encoding="utf-8")
    staging.replace(run_dir / RUN_FACTS)
    (run_dir / "card.md").write_text(render_card(facts), encoding="utf-8")
    return facts
