"""The report's "forgetting" and "your text" sections: what the adapter changed outside the job's own task.

Forgetting (`run`, section "forgetting"): the studio ships about a hundred short general prompts
(general_prompts.jsonl: facts, reasoning, maths, code, instructions, summarising, other languages, requests to
refuse). The base answers them (greedy, the playground's settings); then, for every other variant:
- `kl_per_token`: KL(base ‖ variant) of the next-token distributions on the base's own answer tokens (teacher
  forced, end-of-turn token included), the mean over one answer's tokens, then over the prompts: 0 = the variant
  would say exactly what the base says, with the same confidence;
- `changed_answers`: the share of prompts whose greedy answer (stripped text) is no longer the base's;
- `base_answer_loss`: the mean negative log-likelihood per token of the base's answers under each variant (the
  base's own figure next to it): how much less likely the variant finds what the base would have said.
The [tokens, vocabulary] log-softmax rows the KL needs are computed batch by batch and dropped at once (the
bundled model's vocabulary is 49,152: a hundred answers' rows would take gigabytes).

Your text (`corpus`, section "corpus"): the perplexity of each variant on a plain-text file of the user's
(UTF-8), scored in windows of the job's max_length tokens with a stride of half a window (every token is scored
once, with at least half a window of context after the first window), at most `ctx.max_rows` windows.
"""
from __future__ import annotations

import codecs
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path

from backend.evaluate.common import EvalContext, EvalError, Metric, Progress, RowResult, SectionResult
from backend.evaluate.generate import batches, generate, prompt_ids, score

SECTION = "forgetting"
CORPUS = "corpus"
PROMPTS_FILE = Path(__file__).with_name("general_prompts.jsonl")

HELP = {
    "kl_per_token": "KL(base ‖ variant) of the next-token distributions on the base's own answers to the general "
                    "prompts, mean over each answer's tokens then over the prompts (nats); 0 = nothing changed",
    "changed_answers": "share of the general prompts whose greedy answer is no longer the base's answer",
    "base_answer_loss": "mean negative log-likelihood per token of the base's own answers under each variant "
                        "(mean per answer, then over the prompts); above the base's figure = the variant finds "
                        "what the base would say less likely",
}
LABELS = {"kl_per_token": "KL from base per token", "changed_answers": "changed answers",
          "base_answer_loss": "loss on the base's answers"}
CORPUS_HELP = {
    "loss": "mean negative log-likelihood per token of your text (sliding windows, each token scored once)",
    "perplexity": "exp(loss) on your text: how surprised each variant is by it; lower = closer to your text",
}
CORPUS_LABELS = {"loss": "loss on your text", "perplexity": "perplexity on your text"}
CORPUS_TOKENS_PER_FORWARD = 4096     # windows scored together: at most this many tokens per forward pass
_BYTES_PER_TOKEN_READ = 16           # read at most this many bytes per token the cap allows (then tokenized)


def load_prompts(path: Path = PROMPTS_FILE) -> list[dict]:
    """The shipped general prompts: one {"prompt", "category"} per line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({"prompt": str(row["prompt"]), "category": str(row.get("category") or "other")})
    return rows


def pick(rows: list[dict], count: int, seed: int) -> list[int]:
    """`count` row indices, spread over the categories (a seeded round-robin), in file order."""
    if count >= len(rows):
        return list(range(len(rows)))
    by_category: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_category[row["category"]].append(index)
    generator = random.Random(seed)
    queues = [generator.sample(indices, len(indices)) for indices in by_category.values()]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return sorted(chosen)


def kl_per_token(base_logsoftmax, variant_logsoftmax) -> float | None:
    """Mean over tokens of KL(P_base ‖ P_variant) = Σ_v p_base(v) (log p_base(v) − log p_variant(v)); rows are
    [tokens, vocabulary] log-softmax tensors of the same answer tokens. Rounding below 0 is clipped to 0."""
    import torch

    if base_logsoftmax is None or variant_logsoftmax is None or base_logsoftmax.shape[0] == 0:
        return None
    base, other = base_logsoftmax.double(), variant_logsoftmax.double()
    per_token = (base.exp() * (base - other)).sum(dim=-1).clamp_min(0.0)
    return float(torch.mean(per_token))


def run(ctx: EvalContext, progress: Progress | None = None, limit: int | None = None) -> SectionResult:
    """The forgetting section over the shipped general prompts (at most `limit`, else `ctx.max_rows`)."""
    started = time.perf_counter()
    progress = progress or Progress()
    every = load_prompts()
    chosen = pick(every, max(1, int(limit if limit is not None else ctx.max_rows)), ctx.seed)
    rows = [every[i] for i in chosen]
    prompts = [[{"role": "user", "content": row["prompt"]}] for row in rows]
    base, others = ctx.variants[0], ctx.variants[1:]
    n = len(rows)
    progress.add_total(n * (2 + 2 * len(others)))

    # one order for all the work: by prompt length, so a batch pads little; results go back to row order
    order = sorted(range(n), key=lambda i: len(prompt_ids(ctx, prompts[i])))

    def in_order(values: list, into: list) -> list:
        for position, i in enumerate(order):
            into[i] = values[position]
        return into

    def step(what: str):
        return lambda units: progress.advance(units, f"forgetting · {what}")

    answers: dict[str, list[str]] = {
        base.key: in_order(generate(ctx, base, [prompts[i] for i in order], step(f"{base.key}: answering")),
                           [""] * n)}
    for variant in others:
        answers[variant.key] = in_order(
            generate(ctx, variant, [prompts[i] for i in order], step(f"{variant.key}: answering")), [""] * n)

    kl: dict[str, list[float | None]] = {v.key: [None] * n for v in others}
    loss: dict[str, list[float | None]] = {v.key: [None] * n for v in ctx.variants}
    for _, chunk in batches(order, ctx.batch_size):
        chunk_prompts = [prompts[i] for i in chunk]
        chunk_answers = [answers[base.key][i] for i in chunk]
        reference = score(ctx, base, chunk_prompts, chunk_answers, step(f"{base.key}: scoring"), keep_logits=True)
        for i, scored in zip(chunk, reference):
            loss[base.key][i] = scored.loss
        for variant in others:
            scored_rows = score(ctx, variant, chunk_prompts, chunk_answers, step(f"{variant.key}: scoring"),
                                keep_logits=True)
            for i, mine, theirs in zip(chunk, reference, scored_rows):
                kl[variant.key][i] = kl_per_token(mine.logsoftmax, theirs.logsoftmax)
                loss[variant.key][i] = theirs.loss
            del scored_rows
        del reference

    changed = {v.key: [answers[v.key][i] != answers[base.key][i] for i in range(n)] for v in others}
    keys = [v.key for v in ctx.variants]
    metrics = [
        Metric(SECTION, "kl_per_token", LABELS["kl_per_token"], False,
               {base.key: 0.0, **{k: _mean(kl[k]) for k in kl}}, HELP["kl_per_token"], n),
        Metric(SECTION, "changed_answers", LABELS["changed_answers"], False,
               {base.key: 0.0, **{k: _mean([1.0 if c else 0.0 for c in changed[k]]) for k in changed}},
               HELP["changed_answers"], n),
        Metric(SECTION, "base_answer_loss", LABELS["base_answer_loss"], False,
               {k: _mean(loss[k]) for k in keys}, HELP["base_answer_loss"], n),
    ]
    section = SectionResult(SECTION, metrics=metrics, notes=_notes(ctx, rows, kl, changed))
    for i, row in enumerate(rows):
        scores: dict[str, dict[str, float | None]] = {base.key: {"base_answer_loss": _round(loss[base.key][i])}}
        for key in kl:
            scores[key] = {"kl_per_token": _round(kl[key][i]), "changed": 1.0 if changed[key][i] else 0.0,
                           "base_answer_loss": _round(loss[key][i])}
        section.rows.append(RowResult(SECTION, i + 1, row["prompt"], answers={k: answers[k][i] for k in keys},
                                      scores=scores, note=f"category: {row['category']}"))
    section.seconds = round(time.perf_counter() - started, 2)
    return section


def _notes(ctx, rows, kl, changed) -> list[str]:
    categories = sorted({row["category"] for row in rows})
    decoding = (f"greedy up to {ctx.settings.max_new_tokens} new tokens"
                if not getattr(ctx.settings, "temperature", 0)
                else f"sampled at temperature {ctx.settings.temperature:g} (seed {ctx.settings.seed}) up to "
                     f"{ctx.settings.max_new_tokens} new tokens")
    notes = [f"{len(rows)} of the studio's {len(load_prompts())} general prompts ({', '.join(categories)}); the "
             f"base's answers {decoding}, the KL and the loss taken on those answers' tokens as the chat template "
             "renders them (end-of-turn token included)"]
    for key in kl:
        parts = []
        for category in categories:
            members = [i for i, row in enumerate(rows) if row["category"] == category]
            value = _mean([kl[key][i] for i in members])
            parts.append(f"{category} {_fmt(value)} ({sum(changed[key][i] for i in members)}/{len(members)} changed)")
        notes.append(f"{key} by category, KL per token (changed answers): " + ", ".join(parts))
    return notes


# ------------------------------------------------------------------------------------------------ your text

def corpus(ctx: EvalContext, progress: Progress | None, path) -> SectionResult:
    """Perplexity of every variant on the user's plain-text file (EvalError: one sentence, when it is missing,
    empty or not UTF-8). At most `ctx.max_rows` windows of the job's max_length tokens are scored."""
    import torch

    started = time.perf_counter()
    progress = progress or Progress()
    path = Path(str(path)).expanduser()
    window = max(8, int(getattr(ctx.config.training, "max_length", 1024) or 1024))
    stride = max(1, window // 2)
    cap_windows = max(1, int(ctx.max_rows))
    cap_tokens = window + (cap_windows - 1) * stride
    text, read_bytes, file_bytes = _read_text(path, cap_tokens * _BYTES_PER_TOKEN_READ)
    ids = list(ctx.tokenizer(text)["input_ids"])
    if len(ids) < 2:
        raise EvalError(f"{path} has too little text to score ({len(ids)} token); give a file with at least a "
                        "sentence of text")
    total_tokens = len(ids)
    ids = ids[:cap_tokens]
    spans = _windows(len(ids), window, stride)           # (begin, end, first scored position)
    progress.add_total(len(ctx.variants) * len(spans))
    per_forward = max(1, min(ctx.batch_size, CORPUS_TOKENS_PER_FORWARD // window))
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id

    window_nll: dict[str, list[float]] = {}
    window_count = [end - first for _, end, first in spans]
    for variant in ctx.variants:
        sums: list[float] = []
        with variant.active() as model, torch.no_grad():
            model.eval()
            for _, chunk in batches(spans, per_forward):
                width = max(end - begin for begin, end, _ in chunk)
                rows = [ids[begin:end] for begin, end, _ in chunk]
                input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
                attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits
                for row, (begin, end, first) in enumerate(chunk):
                    # the logit at t predicts token t + 1: tokens first..end-1 come from positions first-1..end-2
                    start = first - begin
                    predicted = logits[row, start - 1:end - begin - 1].float()
                    target = input_ids[row, start:end - begin]
                    nll = torch.nn.functional.cross_entropy(predicted, target, reduction="sum")
                    sums.append(float(nll))
                del logits
                progress.advance(len(chunk), f"your text · {variant.key}")
        window_nll[variant.key] = sums

    scored = sum(window_count)
    keys = [v.key for v in ctx.variants]
    loss = {k: sum(window_nll[k]) / scored for k in keys}
    section = SectionResult(CORPUS, metrics=[
        Metric(CORPUS, "loss", CORPUS_LABELS["loss"], False, loss, CORPUS_HELP["loss"], len(spans)),
        Metric(CORPUS, "perplexity", CORPUS_LABELS["perplexity"], False, {k: _exp(v) for k, v in loss.items()},
               CORPUS_HELP["perplexity"], len(spans)),
    ])
    section.notes.append(f"{path.name}: {len(ids)} tokens ({scored} of them predicted) in {len(spans)} windows of "
                         f"up to {window} tokens (the job's max_length) with a stride of {stride}")
    if total_tokens > len(ids) or read_bytes < file_bytes:
        shown = f"{total_tokens}" if read_bytes >= file_bytes else f"more than {total_tokens}"
        section.notes.append(f"only the first {len(ids)} of {shown} tokens ({read_bytes:,} of {file_bytes:,} bytes "
                             f"read) were scored: the cap is {cap_windows} windows (max rows) so a big file takes "
                             "bounded time; raise max rows to score more")
    for number, ((begin, end, first), count) in enumerate(zip(spans, window_count), start=1):
        snippet = ctx.tokenizer.decode(ids[first:end], skip_special_tokens=True).strip()
        section.rows.append(RowResult(CORPUS, number, _cut(snippet, 300),
                                      scores={k: {"loss": round(window_nll[k][number - 1] / count, 4)}
                                              for k in keys},
                                      note=f"tokens {first}-{end - 1}"))
    section.seconds = round(time.perf_counter() - started, 2)
    return section


def _read_text(path: Path, max_bytes: int) -> tuple[str, int, int]:
    """(text, bytes read, file size): the file's first max_bytes decoded as UTF-8 (a character cut at the end
    is left out). EvalError with one sentence when the file is missing, empty or not UTF-8."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise EvalError(f"{path} is not a file; give the path of a plain-text file (UTF-8)")
        with path.open("rb") as handle:
            data = handle.read(max_bytes)
    except EvalError:
        raise
    except FileNotFoundError:
        raise EvalError(f"there is no file at {path}; check the path of your text file") from None
    except OSError as error:
        raise EvalError(f"{path} cannot be read ({error.strerror or error}); check the path and its "
                        "permissions") from None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        text = decoder.decode(data, final=len(data) >= size)
    except UnicodeDecodeError as error:
        raise EvalError(f"{path} is not UTF-8 text: the byte at offset {error.start} (0x{data[error.start]:02x}) "
                        "cannot be decoded; save the file as UTF-8 (for example `iconv -f latin1 -t utf-8 IN > OUT`) "
                        "and try again") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise EvalError(f"{path} is empty{' (only whitespace)' if size else ''}; give a plain-text file with the "
                        "kind of text you want the adapter to model")
    return text, len(data), size


def _windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over `length` tokens: (begin, end, first scored position). Every position from 1 on is
    scored exactly once (position 0 has no context); a window after the first keeps window - stride tokens of
    context before the ones it scores."""
    spans, scored_to = [], 1
    begin = 0
    while scored_to < length:
        end = min(begin + window, length)
        spans.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == length:
            break
        begin += stride
    return spans


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _exp(value: float | None) -> float | None:
    if value is None:
        return None
    return math.exp(value) if value < 700 else None     # no Infinity in eval.json
