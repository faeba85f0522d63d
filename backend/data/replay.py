"""A general-purpose replay set distilled from a base model's own answers, mixed in against forgetting.

The seeds' first mitigation for catastrophic forgetting is replay: a small share of general data in the
fine-tuning batches. Nothing may be downloaded here, and a borrowed general set would pull the model towards
someone else's style, so the general data is the base model's OWN answers (greedy, its own chat template) to
REPLAY_PROMPTS, varied everyday requests: training on them holds the adapter to what the base already says
everywhere but in the user's data (self-distillation).

The set is a saved dataset named `replay-<model>` (the Data tab, `lorastudio data list`), built once per base
model on first use by a job whose `mix` names `replay`, or ahead of time with `lorastudio data replay`. Its meta
keeps the base's weight hash, so a changed base is distilled again. Small chat models ramble: an answer the token
limit cut is kept up to its last full sentence (a replay set must not teach answers that stop mid-sentence), and
left out when not even one sentence ended; the meta counts both.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from pathlib import Path

from backend.data import registry
from backend.data.validate import MIN_ROWS
from backend.data.replay_prompts import REPLAY_PROMPTS

log = logging.getLogger("lorastudio")

REPLAY = "replay"            # the name a job's mix uses for "the replay set of this job's base model"
MAX_NEW_TOKENS = 128         # per answer: about 3 minutes for the whole set on 2 CPU cores (bundled model)
MIN_KEPT_CHARS = 20          # a trimmed answer shorter than this is left out
BATCH_SIZE = 8               # left-padded generation batch (about the cost of one answer on a CPU)


def dataset_name(model_name: str) -> str:
    """The saved dataset's name for a base model (a valid dataset name: letters, digits, '.', '_', '-')."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.rsplit("/", 1)[-1]).strip("-.") or "model"
    return f"replay-{slug}"[:64]


def ensure_replay(model: str, chat_template: str | None = None, progress=None,
                  prompts: tuple[str, ...] = REPLAY_PROMPTS, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The id of the replay set of base `model`, distilled first if there is none for its current weights.
    progress(done, total, text), when given, is called after each batch."""
    from backend import models

    info = models.resolve(model)
    name = dataset_name(info.name)
    recipe = {"model": info.name, "weights_sha256": info.weights_sha256, "prompts": len(prompts),
              "max_new_tokens": max_new_tokens, "chat_template": chat_template}
    found = registry.find_by_name(name)
    if found is not None:
        kept = registry.dataset_info(found).get("replay", {})
        if {key: kept.get(key) for key in recipe} == recipe:
            return found
        log.info("replay set %s was distilled from other weights or settings: distilling it again", name)
        registry.delete_dataset(found)
    started = time.monotonic()
    rows, trimmed, cut = distil(model, prompts, max_new_tokens, chat_template, progress)
    if len(rows) < MIN_ROWS:
        raise registry.DataError(f"only {len(rows)} of the base model's {len(prompts)} replay answers held a full "
                                 f"sentence within {max_new_tokens} tokens, too few for a replay set; mix in a saved "
                                 "dataset instead")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        dataset_id = registry.register_upload(path, name=name, extra_meta={"replay": {
            **recipe, "rows": len(rows), "trimmed_answers": trimmed, "left_out": cut,
            "seconds": round(time.monotonic() - started, 1)}})
    log.info("replay set %s: %d answers of %s (%d trimmed to their last full sentence, %d left out) in %.0f s",
             name, len(rows), info.name, trimmed, cut, time.monotonic() - started)
    return dataset_id


def distil(model: str, prompts: tuple[str, ...], max_new_tokens: int, chat_template: str | None = None,
           progress=None) -> tuple[list[dict], int, int]:
    """(chat rows of the base model's greedy answers, how many were trimmed, how many left out)."""
    from backend import models
    from backend.evaluate.common import EvalContext, Variant
    from backend.evaluate.generate import _stop_ids, generate_ids
    from backend.serve.chat import GenerationSettings

    tokenizer = models.load_tokenizer(model, chat_template)
    base = models.load_model(model)
    context = EvalContext(job_id="", config=None, source=None, tokenizer=tokenizer, model=base,
                          variants=[Variant("base", "base", base, None)],
                          settings=GenerationSettings(max_new_tokens=max_new_tokens), batch_size=BATCH_SIZE)
    conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        if progress:
            progress(done[0], len(prompts), f"distilling the replay set: answer {done[0]}/{len(prompts)}")

    answers = generate_ids(context, context.variants[0], conversations, advance)
    stops = _stop_ids(base, tokenizer)
    rows, trimmed, cut = [], 0, 0
    for prompt, ids in zip(prompts, answers):
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        if not (ids and ids[-1] in stops):                  # the token limit cut it
            text = last_full_sentence(text)
            trimmed += bool(text)
        if len(text) < MIN_KEPT_CHARS:
            cut += 1
            continue
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]})
    return rows, trimmed, cut


def last_full_sentence(text: str) -> str:
    """The text up to its last sentence end ('.', '!' or '?' before white space, or a line break), or ''. A list
    number ('2. ') is no sentence end."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)|\n", text)
            if not re.fullmatch(r"\s*\d+\.", text[text.rfind("\n", 0, m.start()) + 1:m.end()])]
    return text[:ends[-1]].rstrip() if ends else ""

