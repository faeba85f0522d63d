"""A job's held-out rows, rebuilt exactly as its stage split them: the one implementation.

The dataset is loaded for the job's stage, every row goes through the stage recipe's `example()` (the rows it
dropped for max_length are dropped here too) and through the harness's own seeded split
(`backend.stages.harness.split_examples`), so the rows are the ones the trainer held out, in the same order.
Each becomes a `HeldOutRow`: the prompt turns, the reference answer, and what the stage adds (DPO / ORPO: the
chosen and rejected answers; KTO: the completion and its label), plus the row's tools. A pretrain job holds out
packed blocks of raw text, not rows: each held-out block becomes a row whose prompt is the opening of its text and
whose reference is the continuation (`text_row`).

`split(config, job_id)` gives every held-out row (the Playground's "eval split" takes the first ones);
`load(ctx)` / `load_rows(ctx)` give the report's rows: at most `ctx.max_rows`, a seeded subset in split order
when there are more (the same kind of subset the trainer evaluates, `stages.common.eval_subset`).
"""
from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field

from backend.evaluate.common import EvalError
from backend.vocab import Stage

# end-of-turn markers cut from a rendered assistant turn (the template writes them after the answer)
_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class HeldOutRow:
    index: int                              # position in the job's held-out split (0-based)
    messages: list[dict]                    # the prompt: every turn before the answer
    reference: str = ""                     # the answer to compare with ("" = none, e.g. a KTO thumbs-down row)
    chosen: str | None = None               # DPO / ORPO: the preferred answer (= reference)
    rejected: str | None = None             # DPO / ORPO: the rejected answer
    completion: str | None = None           # KTO: the labelled completion
    label: bool | None = None               # KTO: True = desirable (thumbs up)
    tools: list[dict] | None = None         # the function schemas the row declares
    reference_calls: list[dict] = field(default_factory=list)   # the reference's tool calls: {"name", "arguments"}

    @property
    def prompt_text(self) -> str:
        """The last user turn (what the per-row table shows), else the last turn of the prompt."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content") or "")
        return str(self.messages[-1].get("content") or "") if self.messages else ""


@dataclass
class HeldOut:
    job_id: str
    dataset: str                            # the dataset id
    rows: list[HeldOutRow]
    held_out: int                           # rows in the job's whole eval split
    notes: list[str] = field(default_factory=list)   # one sentence each (a changed dataset, a subset)


def split(config, job_id: str, tokenizer=None) -> HeldOut:
    """Every held-out row of the job, in split order; EvalError (one sentence) when there are none."""
    from backend import data as datasets_backend
    from backend import models
    from backend.stages import recipe_for
    from backend.stages.harness import split_examples

    fraction = config.training.eval_fraction
    if fraction <= 0:
        raise EvalError(f"job {job_id} trained without an eval split (training.eval_fraction = 0), so it has no "
                        "held-out rows; retrain it with an eval fraction (e.g. 0.1), or type or upload your own "
                        "prompts in the Playground")
    try:
        # eval_fraction only adds the validator's split-size check; an empty split gets its own sentence below
        dataset = datasets_backend.load_for_stage(config.dataset, config.stage)
        tokenizer = tokenizer or models.load_tokenizer(config.model, config.chat_template, config.thinking)
        job_split = split_examples(config, recipe_for(config.stage), dataset, tokenizer)
    except datasets_backend.DataError as error:
        raise EvalError(f"the held-out rows of job {job_id} cannot be rebuilt from dataset {config.dataset}: "
                        f"{str(error).rstrip('.')}") from error
    if not job_split.eval_examples:
        raise EvalError(f"job {job_id} has an empty eval split: training.eval_fraction = {fraction:g} of the "
                        f"{len(dataset.rows)} rows of dataset {dataset.id} rounds to no row; retrain with a larger "
                        "eval fraction or more rows")
    if config.stage == Stage.PRETRAIN:
        # the held-out blocks themselves: their source documents may hold text the job trained on
        rows = [text_row(block["input_ids"], index, tokenizer) for index, block in enumerate(job_split.eval_examples)]
    else:
        rows = [to_row(config.stage, row, index, tokenizer) for index, row in enumerate(job_split.eval_source_rows)]
    notes = []
    changed = _changed_since_training(job_id, dataset)
    if changed:
        notes.append(changed)
    return HeldOut(job_id, dataset.id, rows, len(rows), notes)


def subset(rows: list, max_rows: int, seed: int) -> list:
    """At most max_rows of the rows: a seeded subset kept in split order (all of them when they fit)."""
    from backend.stages.common import eval_subset
    return eval_subset(rows, max_rows, seed)


_cache: dict = {"ctx": None, "key": None, "value": None}


def load(ctx) -> HeldOut:
    """The report's held-out rows: `split` capped at ctx.max_rows (seeded by ctx.seed). Built once per
    context (the task and formats sections share them)."""
    cached = _cache["ctx"]() if _cache["ctx"] is not None else None
    key = (ctx.job_id, ctx.max_rows, ctx.seed)
    if cached is ctx and _cache["key"] == key:
        return _cache["value"]
    full = split(ctx.config, ctx.job_id)
    rows = subset(full.rows, ctx.max_rows, ctx.seed)
    notes = list(full.notes)
    if len(rows) < full.held_out:
        notes.insert(0, f"{len(rows)} of the {full.held_out} held-out rows (a seeded subset; max_rows = "
                        f"{ctx.max_rows})")
    value = HeldOut(full.job_id, full.dataset, rows, full.held_out, notes)
    try:
        _cache.update(ctx=weakref.ref(ctx), key=key, value=value)   # weak: the cache never keeps a model alive
    except TypeError:
        _cache.update(ctx=None, key=None, value=None)
    return value


def load_rows(ctx) -> list[HeldOutRow]:
    return load(ctx).rows


# ------------------------------------------------------------------ one canonical row -> HeldOutRow

def to_row(stage, row: dict, index: int = 0, tokenizer=None) -> HeldOutRow:
    """One canonical row of the stage's kind (sft: messages; dpo / orpo: prompt / chosen / rejected; kto:
    prompt / completion / label) as a HeldOutRow; the answer is the last turn of its side."""
    tools = row.get("tools") or None
    if stage == Stage.PRETRAIN:
        if tokenizer is None:
            raise EvalError("a raw-text row needs the model's tokenizer to be cut into prompt and continuation")
        from backend.data.packing import document_ids
        return text_row(document_ids(tokenizer, row["text"]), index, tokenizer)
    if stage == Stage.SFT:
        messages = list(row["messages"])
        last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
        prompt, answer = messages[:last], messages[last]
        reference = answer_text(prompt, answer, tools, tokenizer)
        return HeldOutRow(index, prompt, reference, tools=tools, reference_calls=tool_calls_of(answer))
    prompt = list(row["prompt"])
    if stage == Stage.KTO:
        message = _last(row.get("completion"))
        completion = answer_text(prompt, message, tools, tokenizer)
        label = bool(row.get("label"))
        return HeldOutRow(index, prompt, completion if label else "", completion=completion, label=label,
                          tools=tools, reference_calls=tool_calls_of(message) if label else [])
    chosen_message, rejected_message = _last(row.get("chosen")), _last(row.get("rejected"))
    chosen = answer_text(prompt, chosen_message, tools, tokenizer)
    rejected = answer_text(prompt, rejected_message, tools, tokenizer)
    return HeldOutRow(index, prompt, chosen, chosen=chosen, rejected=rejected, tools=tools,
                      reference_calls=tool_calls_of(chosen_message))


def text_row(ids: list[int], index: int, tokenizer) -> HeldOutRow:
    """Raw text (pretrain) as a row: the first half of the longest document piece in `ids` is the prompt, its
    second half the reference. What a user expects of a CPT job is that the adapter continues held-out text the
    way the corpus does; cutting at EOS keeps the continuation inside one document. (The prompt is still sent as
    a user turn through the chat template, as every held-out prompt is.)"""
    eos = tokenizer.eos_token_id
    pieces, current = [], []
    for token in ids:
        if token == eos:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    pieces.append(current)
    longest = max(pieces, key=len)
    half = max(1, len(longest) // 2)
    prompt = tokenizer.decode(longest[:half], skip_special_tokens=True).strip()
    reference = tokenizer.decode(longest[half:], skip_special_tokens=True).strip()
    return HeldOutRow(index, [{"role": "user", "content": prompt}], reference)


def _last(side) -> dict:
    if isinstance(side, list):
        return side[-1] if side else {"role": "assistant", "content": ""}
    return {"role": "assistant", "content": str(side or "")}


def tool_calls_of(message: dict) -> list[dict]:
    """The message's tool calls as [{"name", "arguments": dict}] (OpenAI's {"function": {...}} unwrapped,
    arguments given as a JSON string parsed)."""
    out = []
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        arguments = function.get("arguments", function.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        if function.get("name"):
            out.append({"name": str(function["name"]), "arguments": arguments})
    return out


def answer_text(prompt: list[dict], message: dict, tools=None, tokenizer=None) -> str:
    """The answer as text. A plain turn: its content. A turn with tool calls: the text the chat template
    writes for it (the template decides how a call looks), or, when the template writes no calls, the
    content followed by each call in the Hermes / Qwen form `<tool_call>{"name", "arguments"}</tool_call>`."""
    content = str(message.get("content") or "")
    calls = tool_calls_of(message)
    if not calls:
        return content
    if tokenizer is not None:
        rendered = _rendered_turn(tokenizer, prompt, message, tools)
        if rendered and any(call["name"] in rendered for call in calls):
            return rendered
    written = "\n".join(f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>" for call in calls)
    return f"{content.strip()}\n{written}" if content.strip() else written


def _rendered_turn(tokenizer, prompt: list[dict], message: dict, tools) -> str:
    kwargs = {"tools": tools} if tools else {}
    try:
        before = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kwargs)
        after = tokenizer.apply_chat_template(prompt + [message], tokenize=False, **kwargs)
    except Exception:  # noqa: BLE001 - a template that cannot render the call: the written form is used
        return ""
    if not after.startswith(before):
        return ""
    text = after[len(before):]
    markers = [m for m in (*_END_MARKERS, getattr(tokenizer, "eos_token", None)) if m]
    cut = min((text.find(m) for m in markers if m in text), default=len(text))
    return text[:cut].strip()


def _changed_since_training(job_id: str, dataset) -> str:
    """A sentence when the dataset's content is not what the job trained on (run.json keeps its sha256)."""
    from backend import workspace
    from backend.jobs.card import read_run_facts

    trained = (read_run_facts(workspace.run_dir(job_id)).get("dataset") or {}).get("sha256")
    if trained and dataset.content_hash and trained != dataset.content_hash:
        return (f"dataset {dataset.id} changed since job {job_id} trained on it, so these held-out rows are the new "
                "content split the same way and some may be rows the job trained on")
    return ""
