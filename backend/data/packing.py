"""Raw text into training blocks, once for both the dataset report and the pretrain stage, so they agree.

Each document is tokenised without special tokens and followed by the tokenizer's EOS token (the document
boundary the model learns); the documents are concatenated in order and cut into blocks of exactly
`block_length` tokens. The last partial block is DROPPED: every block then has the same length, so batches need
no padding and every token carries loss (the run_clm recipe of transformers' examples). The report says how many
tail tokens that drops.
"""
from __future__ import annotations

LONGEST_SHOWN = 3      # the longest documents named in the report


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to put between documents; pick a model whose tokenizer "
                         "defines one")
    return tokenizer.eos_token_id


def document_ids(tokenizer, text: str) -> list[int]:
    """The tokens of one document followed by EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id(tokenizer)]


def pack(documents: list[list[int]], block_length: int) -> list[tuple[int, list[int]]]:
    """(index of the document the block starts in, block) for every full block of the concatenated documents."""
    blocks, current, start = [], [], 0
    for index, ids in enumerate(documents):
        position = 0
        while position < len(ids):
            if not current:
                start = index
            take = ids[position:position + block_length - len(current)]
            current.extend(take)
            position += len(take)
            if len(current) == block_length:
                blocks.append((start, current))
                current = []
    return blocks   # `current` (the partial tail) is dropped on purpose, see the module docstring


def text_stats(rows: list[tuple[int, dict]], tokenizer, block_length: int) -> dict:
    """What the report says of a raw-text dataset: documents, tokens (EOS included), full blocks, the tail tokens
    dropped, and the longest documents with their row and source."""
    lengths = [(len(document_ids(tokenizer, row["text"])), number, row.get("source")) for number, row in rows]
    tokens = sum(length for length, _, _ in lengths)
    longest = sorted(lengths, key=lambda item: -item[0])[:LONGEST_SHOWN]
    return {"documents": len(rows), "tokens": tokens, "blocks": tokens // block_length, "block_length": block_length,
            "tail_tokens": tokens % block_length,
            "longest": [{"row": number, "source": source, "tokens": length} for length, number, source in longest]}
