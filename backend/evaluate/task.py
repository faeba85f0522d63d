"""The report's "held-out rows" section: each variant on the job's own held-out rows.

For every variant (base, adapter, and the compared job's adapter when there is one):
- teacher-forced loss and perplexity of the reference answers (`generate.score`: the answer's tokens only,
  end-of-turn token included, one token-weighted mean over all rows);
- answers generated in batches with the playground's settings (`generate.generate_ids`), compared with the
  references: exact match, token F1, ROUGE-L, chrF (`backend.evaluate.metrics`), their length in tokens and how
  many ran into max_new_tokens;
- preference stages: DPO / ORPO rows, how often the variant gives the chosen answer a higher summed
  log-probability than the rejected one, and the mean margin; KTO rows, how often a thumbs-up completion gets a
  higher mean log-probability per token than a thumbs-down one (all pairs of the two kinds), and the mean gap.
  These metrics carry section "preference" (the report shows them as "preference pairs").

Rows: one RowResult per held-out row (its 1-based position in `heldout.load_rows(ctx)`, which the formats
section uses too), with each variant's answer and per-row scores, so the UI can sort by what got worse.
"""
from __future__ import annotations

import math
import time

from backend.evaluate import heldout
from backend.evaluate import metrics as text_metrics
from backend.evaluate.common import EvalContext, Metric, Progress, RowResult, SectionResult
from backend.evaluate.generate import _stop_ids, generate_ids, prompt_ids, score

SECTION = "task"
PREFERENCE = "preference"

HELP = {
    "token_f1": "SQuAD token F1 of answer vs reference: lower-cased, punctuation and a/an/the removed, word overlap",
    "exact_match": "share of answers equal to the reference after stripping, collapsing whitespace and case-folding",
    "rouge_l": "ROUGE-L F-measure (longest common word subsequence, rouge-score), 0 to 1",
    "chrf": "chrF (sacrebleu, character 6-gram F-score, beta 2) over all rows, 0 to 100",
    "loss": "mean negative log-likelihood per reference-answer token, teacher-forced (end-of-turn token included)",
    "perplexity": "exp(loss): how surprised the variant is by the reference answers",
    "answer_tokens": "mean generated answer length in tokens (end token not counted); shorter is marked better",
    "cut_off": "share of answers that reached max_new_tokens without ending",
    "chosen_preferred": "share of pairs whose chosen answer gets a higher summed log-probability than the rejected",
    "logprob_margin": "mean summed log-probability of the chosen answer minus the rejected one (nats)",
    "desirable_ranked_higher": "share of (thumbs-up, thumbs-down) row pairs in which the thumbs-up completion has "
                               "the higher mean log-probability per token (ties count half)",
    "desirable_margin": "mean log-probability per token of thumbs-up completions minus that of thumbs-down ones",
}
LABELS = {"token_f1": "token F1", "exact_match": "exact match", "rouge_l": "ROUGE-L", "chrf": "chrF",
          "loss": "loss", "perplexity": "perplexity", "answer_tokens": "answer length (tokens)",
          "cut_off": "cut off at max tokens", "chosen_preferred": "prefers chosen",
          "logprob_margin": "chosen − rejected log-prob", "desirable_ranked_higher": "thumbs-up ranked higher",
          "desirable_margin": "thumbs-up − thumbs-down log-prob/token"}
HIGHER_IS_BETTER = {"token_f1": True, "exact_match": True, "rouge_l": True, "chrf": True, "loss": False,
                    "perplexity": False, "answer_tokens": False, "cut_off": False, "chosen_preferred": True,
                    "logprob_margin": True, "desirable_ranked_higher": True, "desirable_margin": True}


def run(ctx: EvalContext, progress: Progress | None = None) -> SectionResult:
    """The section for every variant of ctx over its held-out rows (EvalError when the job has none)."""
    started = time.perf_counter()
    progress = progress or Progress()
    held = heldout.load(ctx)
    rows = held.rows
    prompts = [row.messages for row in rows]
    tools = [row.tools for row in rows] if any(row.tools for row in rows) else None
    # what each variant scores teacher-forced: the references, the rejected answers, thumbs-down completions
    targets = [(i, "reference", row.reference) for i, row in enumerate(rows) if row.reference]
    targets += [(i, "rejected", row.rejected) for i, row in enumerate(rows) if row.rejected is not None]
    targets += [(i, "undesirable", row.completion) for i, row in enumerate(rows) if row.label is False]
    progress.add_total(len(ctx.variants) * (len(rows) + len(targets)))

    # generation in order of prompt length (less padding per batch), answers put back in row order
    order = sorted(range(len(rows)), key=lambda i: len(prompt_ids(ctx, prompts[i], tools[i] if tools else None)))
    answers: dict[str, list[str]] = {}
    lengths: dict[str, list[int]] = {}
    cut: dict[str, list[bool]] = {}
    scored: dict[str, dict[tuple[int, str], object]] = {}
    for variant in ctx.variants:
        def step(units, doing, key=variant.key):
            progress.advance(units, f"held-out rows · {key}: {doing}")

        ids = generate_ids(ctx, variant, [prompts[i] for i in order], lambda k: step(k, "generating answers"),
                           tools=[tools[i] for i in order] if tools else None)
        stops = _stop_ids(ctx.model, ctx.tokenizer)
        by_row: list[list[int]] = [[] for _ in rows]
        for position, i in enumerate(order):
            by_row[i] = ids[position]
        ended = [bool(row) and row[-1] in stops for row in by_row]
        answers[variant.key] = [ctx.tokenizer.decode(row, skip_special_tokens=True).strip() for row in by_row]
        lengths[variant.key] = [len(row) - (1 if done else 0) for row, done in zip(by_row, ended)]
        cut[variant.key] = [not done and len(row) >= ctx.settings.max_new_tokens for row, done in zip(by_row, ended)]
        results = score(ctx, variant, [prompts[i] for i, _, _ in targets], [text for _, _, text in targets],
                        lambda k: step(k, "scoring references"),
                        tools=[tools[i] for i, _, _ in targets] if tools else None)
        scored[variant.key] = {(i, kind): result for (i, kind, _), result in zip(targets, results)}

    section = SectionResult(SECTION, notes=_notes(held, rows, ctx))
    keys = [v.key for v in ctx.variants]
    per_row: list[dict[str, dict]] = [{key: {} for key in keys} for _ in rows]
    values: dict[str, dict[str, float | None]] = {name: {} for name in HELP}
    counts: dict[str, int] = {}
    referenced = [i for i, row in enumerate(rows) if row.reference]
    for key in keys:
        for name, fn in (("token_f1", text_metrics.token_f1), ("exact_match", text_metrics.exact_match),
                         ("rouge_l", text_metrics.rouge_l), ("chrf", text_metrics.chrf)):
            figures = [fn(answers[key][i], rows[i].reference) for i in referenced]
            for i, figure in zip(referenced, figures):
                per_row[i][key][name] = round(figure, 4)
            values[name][key] = _mean(figures)
            counts[name] = len(figures)
        values["chrf"][key] = text_metrics.corpus_chrf([answers[key][i] for i in referenced],
                                                       [rows[i].reference for i in referenced])
        nll, tokens = 0.0, 0
        for i in referenced:
            result = scored[key][(i, "reference")]
            if result.tokens:
                per_row[i][key]["loss"] = round(result.loss, 4)
                nll, tokens = nll - sum(result.logprobs), tokens + result.tokens
        values["loss"][key] = nll / tokens if tokens else None
        values["perplexity"][key] = _exp(values["loss"][key])
        counts["loss"] = counts["perplexity"] = sum(1 for i in referenced if scored[key][(i, "reference")].tokens)
        for i in range(len(rows)):
            per_row[i][key]["answer_tokens"] = lengths[key][i]
            per_row[i][key]["cut_off"] = 1.0 if cut[key][i] else 0.0
        values["answer_tokens"][key] = _mean(lengths[key])
        values["cut_off"][key] = _mean([1.0 if c else 0.0 for c in cut[key]])
        counts["answer_tokens"] = counts["cut_off"] = len(rows)
        _preference(rows, scored[key], key, per_row, values, counts)

    first = scored[keys[0]]
    reference_tokens = _mean([first[(i, "reference")].tokens - 1 for i in referenced
                              if first[(i, "reference")].tokens])
    section.metrics = [Metric(PREFERENCE if name in _PREFERENCE_METRICS else SECTION, name, LABELS[name],
                              HIGHER_IS_BETTER[name], values[name], _help(name, reference_tokens), counts[name])
                       for name in HELP if name in counts]
    for i, row in enumerate(rows):
        section.rows.append(RowResult(SECTION, i + 1, row.prompt_text, row.reference,
                                      answers={key: answers[key][i] for key in keys}, scores=per_row[i],
                                      note=_row_note(row)))
    section.seconds = round(time.perf_counter() - started, 2)
    return section


_PREFERENCE_METRICS = ("chosen_preferred", "logprob_margin", "desirable_ranked_higher", "desirable_margin")


def _preference(rows, scored: dict, key: str, per_row, values, counts) -> None:
    """DPO / ORPO pairs and KTO rows of one variant, from the teacher-forced scores."""
    pairs = [i for i, row in enumerate(rows) if row.rejected is not None and row.reference]
    if pairs:
        margins = []
        for i in pairs:
            chosen, rejected = scored[(i, "reference")], scored[(i, "rejected")]
            margin = sum(chosen.logprobs) - sum(rejected.logprobs)
            margins.append(margin)
            per_row[i][key]["logprob_margin"] = round(margin, 4)
            per_row[i][key]["chosen_preferred"] = 1.0 if margin > 0 else 0.0
        values["chosen_preferred"][key] = _mean([1.0 if m > 0 else 0.0 for m in margins])
        values["logprob_margin"][key] = _mean(margins)
        counts["chosen_preferred"] = counts["logprob_margin"] = len(pairs)
    labelled = [i for i, row in enumerate(rows) if row.label is not None]
    if labelled:
        def per_token(i):
            result = scored.get((i, "reference" if rows[i].label else "undesirable"))
            return (sum(result.logprobs) / result.tokens) if result is not None and result.tokens else None

        good = [v for v in (per_token(i) for i in labelled if rows[i].label) if v is not None]
        bad = [v for v in (per_token(i) for i in labelled if not rows[i].label) if v is not None]
        for i in labelled:
            value = per_token(i)
            if value is not None:
                per_row[i][key]["completion_logprob_per_token"] = round(value, 4)
        both = bool(good and bad)
        values["desirable_ranked_higher"][key] = (
            sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad) / (len(good) * len(bad))
            if both else None)
        values["desirable_margin"][key] = _mean(good) - _mean(bad) if both else None
        counts["desirable_ranked_higher"] = counts["desirable_margin"] = len(good) + len(bad)


def _notes(held, rows, ctx) -> list[str]:
    notes = list(held.notes)
    referenced = sum(1 for row in rows if row.reference)
    notes.append(f"{len(rows)} held-out rows of dataset {held.dataset}, answers greedy up to "
                 f"{ctx.settings.max_new_tokens} new tokens" if not getattr(ctx.settings, "temperature", 0)
                 else f"{len(rows)} held-out rows of dataset {held.dataset}, answers sampled at temperature "
                      f"{ctx.settings.temperature:g} (seed {ctx.settings.seed}) up to {ctx.settings.max_new_tokens}"
                      " new tokens")
    labelled = [row for row in rows if row.label is not None]
    if labelled:
        notes.append(f"KTO rows: answers are compared with the {referenced} thumbs-up completions only; the "
                     f"{len(labelled) - referenced} thumbs-down ones are scored for the preference figures")
        if referenced in (0, len(labelled)):
            notes.append("the held-out rows are all of one label, so thumbs-up vs thumbs-down cannot be compared")
    return notes


def _help(name: str, reference_tokens: float | None) -> str:
    if name == "answer_tokens" and reference_tokens is not None:
        return f"{HELP[name]}; the references average {reference_tokens:.1f} tokens"
    return HELP[name]


def _row_note(row) -> str:
    if row.label is False:
        return f"thumbs-down completion (no reference): {row.completion}"
    if row.rejected is not None:
        return f"rejected: {row.rejected}"
    return ""


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _exp(value: float | None) -> float | None:
    if value is None:
        return None
    return math.exp(value) if value < 700 else None     # no Infinity in eval.json
