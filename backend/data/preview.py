"""Preview: the first rows rendered through the model's chat template, exactly as the trainer sees them.

Each preview row is the rendered text cut into segments: trained (assistant answer, carries loss), masked
(prompt: seen but not trained) and cut (beyond max_length: never seen). Token counts come from the same
tokenisation the trainer uses (render.tokenize_conversation for SFT; prompt / prompt + answer for the
preference and KTO stages, as TRL builds them). Pretrain rows are raw text: no chat template, every token of the
document and the EOS after it trained (backend.data.packing.document_ids, what the stage packs), never cut at
max_length (documents run on across blocks).
"""
from __future__ import annotations

import html

from backend.data.render import render_conversation, tokenize_conversation
from backend.vocab import Stage

DEFAULT_PREVIEW_ROWS = 3


def _segments(text: str, spans: list[tuple[int, int]], cut: int | None) -> list[dict]:
    pieces, cursor = [], 0
    for start, end in spans:
        if start > cursor:
            pieces.append((cursor, start, False))
        pieces.append((start, end, True))
        cursor = end
    if cursor < len(text):
        pieces.append((cursor, len(text), False))
    out = []
    for start, end, trained in pieces:
        for a, b, is_cut in ((start, min(end, cut if cut is not None else end), False),
                             (max(start, cut if cut is not None else end), end, True)):
            if b > a:
                out.append({"text": text[a:b], "trained": trained and not is_cut, "cut": is_cut})
    return out


def _cut_char(tokenizer, text: str, max_length: int) -> tuple[int, int | None]:
    """(token count, character offset where max_length cuts the text or None)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    if len(offsets) <= max_length:
        return len(offsets), None
    return len(offsets), offsets[max_length - 1][1]


def preview_row(tokenizer, stage: str, row: dict, max_length: int) -> list[dict]:
    """Preview entries for one stage row (two for DPO / ORPO: chosen and rejected)."""
    if stage == Stage.PRETRAIN:
        from backend.data.packing import document_ids

        tokens = len(document_ids(tokenizer, row["text"]))
        eos = {"text": tokenizer.eos_token, "trained": True, "cut": False}
        return [{"answer": None, "segments": [{"text": row["text"], "trained": True, "cut": False}, eos],
                 "tokens": tokens, "trained_tokens": tokens, "truncated": False}]
    tools = row.get("tools")
    if stage == Stage.SFT:
        rendered = render_conversation(tokenizer, row["messages"], tools)
        tokens = tokenize_conversation(tokenizer, row["messages"], max_length, tools=tools)
        _, cut = _cut_char(tokenizer, rendered.text, max_length)
        return [{"answer": None, "segments": _segments(rendered.text, rendered.spans, cut),
                 "tokens": tokens["length"], "trained_tokens": sum(tokens["assistant_masks"]),
                 "truncated": tokens["length"] > max_length}]
    kwargs = {"tools": tools} if tools else {}
    prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True,
                                                **kwargs)
    prompt_tokens = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    answers = ([("chosen", row["chosen"]), ("rejected", row["rejected"])] if stage in (Stage.DPO, Stage.ORPO)
               else [("desirable" if row["label"] else "undesirable", row["completion"])])
    out = []
    for label, answer in answers:
        full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False, **kwargs)
        start = len(prompt_text) if full.startswith(prompt_text) else len(
            next((prompt_text[:i] for i in range(len(prompt_text), 0, -1) if full.startswith(prompt_text[:i])), ""))
        total, cut = _cut_char(tokenizer, full, max_length)
        trained = max(0, min(total, max_length) - prompt_tokens)
        out.append({"answer": label, "segments": _segments(full, [(start, len(full))], cut), "tokens": total,
                    "trained_tokens": trained, "truncated": total > max_length})
    return out


def preview(spec, tokenizer, stage: str = Stage.SFT, n: int = DEFAULT_PREVIEW_ROWS, max_length: int = 512,
            column_mapping: dict | None = None) -> list[dict]:
    """The first n usable rows of a dataset for `stage`: [{"row", "answer", "segments", "tokens", ...}]."""
    from backend.data import DataError, scan_spec

    _, result, _ = scan_spec(spec, column_mapping)
    if result.kind is None:
        raise DataError(result.log.groups("error")[0].sentence() if result.log.groups("error")
                        else "the dataset format could not be detected")
    from backend.data.formats import incompatibility

    reason = incompatibility(result.kind, result.report.format, stage)
    if reason:
        raise DataError(reason)
    out = []
    for number, row in result.stage_rows_numbered(stage)[:n]:
        for entry in preview_row(tokenizer, stage, row, max_length):
            out.append({"row": number, **entry})
    return out


def preview_html(entries: list[dict]) -> str:
    """Entries as HTML: trained text highlighted, masked prompt dimmed, text past max_length struck out."""
    blocks = []
    for entry in entries:
        title = f"row {entry['row']}" + (f" ({entry['answer']})" if entry.get("answer") else "")
        title += f": {entry['tokens']} tokens, {entry['trained_tokens']} trained"
        if entry["truncated"]:
            title += ", cut at max_length"
        parts = []
        for seg in entry["segments"]:
            text = html.escape(seg["text"])
            if seg["cut"]:
                parts.append(f'<s class="ls-cut" style="opacity:.45">{text}</s>')
            elif seg["trained"]:
                parts.append(f'<mark class="ls-trained" style="background:#c8f7c5">{text}</mark>')
            else:
                parts.append(f'<span class="ls-masked" style="opacity:.65">{text}</span>')
        blocks.append(f'<div class="ls-preview"><div><b>{html.escape(title)}</b></div>'
                      f'<pre style="white-space:pre-wrap">{"".join(parts)}</pre></div>')
    return "\n".join(blocks)
