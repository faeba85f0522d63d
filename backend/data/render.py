"""Render chat rows through the model's chat template and mark the tokens that are trained.

Only assistant tokens carry labels. trl's `assistant_only_loss` needs `{% generation %}` markers that most
templates (SmolLM2's ChatML included) lack, so the mask is built from rendered prefixes instead: the text
of an assistant turn is what rendering messages[:i+1] adds to rendering messages[:i] with the generation
prompt. That works for any template whose renderings of a conversation's prefixes are prefixes of each other.
"""
from __future__ import annotations

from dataclasses import dataclass


class TemplateError(ValueError):
    """The chat template cannot be used to build an assistant mask for this row."""


@dataclass
class RenderedConversation:
    text: str                           # the exact string the tokenizer sees
    spans: list[tuple[int, int]]        # character spans of trained (assistant) text


def render_conversation(tokenizer, messages: list[dict], tools: list | None = None) -> RenderedConversation:
    """The full conversation as text, with the character spans of every assistant turn."""
    def render(msgs, add_generation_prompt=False):
        kwargs = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )

    full = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render(messages[:i], add_generation_prompt=True) if i else ""
        after = render(messages[: i + 1])
        if not after.startswith(before) or not full.startswith(after):
            raise TemplateError(
                f"the chat template renders turn {i + 1} differently depending on what follows it, so the "
                "trained span cannot be located; pick another chat template for this model"
            )
        spans.append((len(before), len(after)))
    return RenderedConversation(text=full, spans=spans)


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int | None = None,
                          tools: list | None = None) -> dict:
    """input_ids and assistant_masks (1 = trained) for one conversation, cut to max_length.

    Returns also `length` (tokens before truncation) so callers can report what truncation removed.
    """
    rendered = render_conversation(tokenizer, messages, tools)
    encoding = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    mask = [0] * len(input_ids)
    for index, (start, end) in enumerate(encoding["offset_mapping"]):
        if end <= start:
            continue
        for span_start, span_end in rendered.spans:
            # a token belongs to the answer when it lies inside an assistant span
            if start >= span_start and end <= span_end:
                mask[index] = 1
                break
    length = len(input_ids)
    if max_length is not None and length > max_length:
        input_ids, mask = input_ids[:max_length], mask[:max_length]
    return {"input_ids": input_ids, "assistant_masks": mask, "length": length}


def trained_segments(tokenizer, messages: list[dict], tools: list | None = None) -> list[tuple[str, bool]]:
    """The rendered text cut into (piece, trained) segments, for previews that highlight trained spans."""
    rendered = render_conversation(tokenizer, messages, tools)
    segments, cursor = [], 0
    for start, end in rendered.spans:
        if start > cursor:
            segments.append((rendered.text[cursor:start], False))
        segments.append((rendered.text[start:end], True))
        cursor = end
    if cursor < len(rendered.text):
        segments.append((rendered.text[cursor:], False))
    return segments
