"""Did a composition keep its parents' skills? For each parent: its own held-out rows (the rows its training held
out, rebuilt by backend/evaluate/heldout.py) scored with the parent and with the composed adapter (and the base):
teacher-forced loss on the reference answers, and exact match of greedy answers when the rows have references.

One model per parent holds the composed adapter and that parent (backend/evaluate/context.py); the numbers use
the same scoring and generation as the quality report. Saved as runs/<composed>/skills.json.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

from backend import workspace
from backend.adapters import RegistryError, get

SKILLS_FILE = "skills.json"


@dataclass
class ParentSkill:
    parent: str
    name: str
    dataset: str
    rows: int
    loss: dict          # variant (base / parent / composed) -> mean loss per answer token
    exact_match: dict   # variant -> share of exact greedy answers (empty when no row has a reference)
    notes: list


def kept_skills(composed_id: str, max_rows: int = 20, progress=None) -> list[ParentSkill]:
    from backend import jobs
    from backend.evaluate import generate as gen
    from backend.evaluate import heldout
    from backend.evaluate.common import EvalError
    from backend.evaluate.context import COMPARE, load_context
    from backend.evaluate.metrics import exact_match

    progress = progress or (lambda fraction, text: None)
    entry = get(composed_id)
    if not entry.parents:
        raise RegistryError(f"adapter {composed_id} is not a composition: it has no parents to compare with")
    results = []
    for number, parent in enumerate(entry.parents):
        progress(number / len(entry.parents), f"scoring parent {parent['id']} ({number + 1}/{len(entry.parents)})")
        parent_entry = get(parent["id"])
        ctx = load_context(composed_id, compare_job=parent["id"], max_rows=max_rows)
        try:
            held = heldout.split(jobs.get(parent["id"]).config, parent["id"], ctx.tokenizer)
        except EvalError as error:
            results.append(ParentSkill(parent["id"], parent_entry.name, "", 0, {}, {}, [str(error)]))
            continue
        rows = heldout.subset(held.rows, max_rows, ctx.seed)
        prompts = [row.messages for row in rows]
        references = [row.reference for row in rows]
        variants = {"base": ctx.variant("base"), "parent": ctx.variant(COMPARE), "composed": ctx.variant("adapter")}
        loss, matches = {}, {}
        for key, variant in variants.items():
            scored = gen.score(ctx, variant, prompts, references)
            tokens = sum(len(s.logprobs) for s in scored)
            loss[key] = -sum(sum(s.logprobs) for s in scored) / tokens if tokens else math.nan
            if any(references):
                answers = gen.generate(ctx, variant, prompts)
                pairs = [(a, r) for a, r in zip(answers, references) if r]
                matches[key] = sum(exact_match(a, r) for a, r in pairs) / len(pairs)
        results.append(ParentSkill(parent["id"], parent_entry.name, held.dataset, len(rows), loss, matches,
                                   held.notes))
    path = workspace.run_dir(composed_id) / SKILLS_FILE
    path.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "max_rows": max_rows,
                                "parents": [asdict(r) for r in results]}, indent=2), encoding="utf-8")
    progress(1.0, "done")
    return results


def saved_skills(composed_id: str) -> list[ParentSkill] | None:
    try:
        data = json.loads((workspace.run_dir(composed_id) / SKILLS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return [ParentSkill(**row) for row in data.get("parents", [])]

