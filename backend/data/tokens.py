"""Token lengths and tokenisation through the model's chat template, exactly as the trainer sees rows.

SFT rows go through render.tokenize_conversation (assistant-only mask). Preference and KTO rows are measured
as TRL builds them: the prompt rendered with the generation prompt, then prompt + answer rendered whole. Pretrain
rows are raw text plus EOS, with no template.
Big row sets are spread over all cores with datasets.map(num_proc=...); rows travel as JSON strings so
Arrow never has to unify message schemas (tool_calls on some rows only, ...).
"""
from __future__ import annotations

import json
import os

from backend.data.render import TemplateError, tokenize_conversation
from backend.vocab import Stage

PARALLEL_MIN_ROWS = 2000      # below this, starting worker processes costs more than it saves


def default_num_proc() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _ids(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages, tools=None, add_generation_prompt=False) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def measure_row(tokenizer, stage: str, row: dict, max_length: int) -> dict:
    """{"length": tokens before truncation, "lost": no trained token survives max_length, "error": str|None}."""
    try:
        if stage == Stage.PRETRAIN:     # raw text: every token trained, documents packed across blocks, none cut
            from backend.data.packing import document_ids
            return {"length": len(document_ids(tokenizer, row["text"])), "lost": False, "error": None}
        if stage == Stage.SFT:
            out = tokenize_conversation(tokenizer, row["messages"], max_length, tools=row.get("tools"))
            return {"length": out["length"], "lost": not any(out["assistant_masks"]), "error": None}
        tools = row.get("tools")
        prompt_len = _ids(tokenizer, _render(tokenizer, row["prompt"], tools, add_generation_prompt=True))
        answers = [row["chosen"], row["rejected"]] if stage in (Stage.DPO, Stage.ORPO) else [row["completion"]]
        length = max(_ids(tokenizer, _render(tokenizer, row["prompt"] + a, tools)) for a in answers)
        return {"length": length, "lost": prompt_len >= max_length, "error": None}
    except TemplateError as exc:
        return {"length": 0, "lost": False, "error": str(exc)}
    except Exception as exc:   # a template that raises on this row (e.g. jinja raise_exception)
        return {"length": 0, "lost": False,
                "error": f"the chat template fails on this row ({str(exc).splitlines()[0][:200]}); fix the row "
                         "or pick a model whose template accepts it"}


def _measure_batch(batch, tokenizer, stage, max_length):
    out = {"length": [], "lost": [], "error": []}
    for text in batch["row"]:
        result = measure_row(tokenizer, stage, json.loads(text), max_length)
        for key in out:
            out[key].append(result[key])
    return out


def _tokenize_batch(batch, tokenizer, max_length):
    out = {"input_ids": [], "assistant_masks": [], "length": []}
    for text in batch["row"]:
        row = json.loads(text)
        result = tokenize_conversation(tokenizer, row["messages"], max_length, tools=row.get("tools"))
        for key in out:
            out[key].append(result[key])
    return out


def _map(rows: list[dict], function, fn_kwargs: dict, num_proc: int | None):
    import datasets

    num_proc = default_num_proc() if num_proc is None else num_proc
    if len(rows) < PARALLEL_MIN_ROWS:
        num_proc = 1
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        table = datasets.Dataset.from_dict({"row": [json.dumps(r, ensure_ascii=False) for r in rows]})
        # new_fingerprint: skip hashing the tokenizer (slow, and nothing here is cached across calls)
        return table.map(function, batched=True, batch_size=256, fn_kwargs=fn_kwargs, remove_columns=["row"],
                         num_proc=num_proc if num_proc > 1 else None,
                         new_fingerprint=os.urandom(8).hex(), keep_in_memory=num_proc <= 1)
    finally:
        if bars:
            datasets.enable_progress_bars()


def measure_rows(rows: list[dict], tokenizer, stage: str, max_length: int,
                 num_proc: int | None = None) -> list[dict]:
    """measure_row for every stage row, on all cores when there are many."""
    if len(rows) < PARALLEL_MIN_ROWS:
        return [measure_row(tokenizer, stage, row, max_length) for row in rows]
    mapped = _map(rows, _measure_batch, {"tokenizer": tokenizer, "stage": stage, "max_length": max_length},
                  num_proc)
    return [{"length": a, "lost": b, "error": c}
            for a, b, c in zip(mapped["length"], mapped["lost"], mapped["error"])]


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, num_proc: int | None = None):
    """A datasets.Dataset of input_ids / assistant_masks / length for SFT rows (all cores when many rows)."""
    return _map(rows, _tokenize_batch, {"tokenizer": tokenizer, "max_length": max_length},
                num_proc if len(rows) >= PARALLEL_MIN_ROWS else 1)
