"""Text metrics of one generated answer against its reference: exact match, token F1, ROUGE-L, chrF.

Plain functions on strings (no model), so they are tested on hand-made strings and reused by any section.

- `exact_match`: 1.0 when both strings are equal after `normalise` (strip, whitespace runs collapsed to one
  space, case-folded), else 0.0. Punctuation counts: "Paris." and "Paris" differ.
- `token_f1`: SQuAD's token F1: both sides lower-cased, punctuation and the English articles a / an / the
  removed, split on whitespace; F1 of the overlapping token bags. Two empty sides score 1, one empty side 0.
- `rouge_l`: the F-measure of ROUGE-L (longest common subsequence of words) from the `rouge-score` package, with
  a Unicode word tokeniser (rouge-score's own keeps only a-z and 0-9, so any other script would score 0): runs of
  letters and digits, each CJK character a word of its own, lower-cased, no stemming.
- `chrf` / `corpus_chrf`: sacrebleu's chrF (character 6-grams, beta 2), 0 to 100, per sentence or over a corpus
  (the statistics summed over all rows first, sacrebleu's standard way of reporting it).
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from functools import lru_cache

_WHITESPACE = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
# a CJK / kana / hangul character is a word of its own; other letters and digits form words
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORDS = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+", re.UNICODE)


def normalise(text: str) -> str:
    """Exact match's normal form: stripped, every whitespace run one space, case-folded."""
    return _WHITESPACE.sub(" ", str(text or "")).strip().casefold()


def exact_match(answer: str, reference: str) -> float:
    return 1.0 if normalise(answer) == normalise(reference) else 0.0


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation, then whitespace tokens (punctuation: every Unicode P* character)."""
    text = str(text or "").lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch
                   for ch in text)
    return _ARTICLES.sub(" ", text).split()


def token_f1(answer: str, reference: str) -> float:
    predicted, gold = squad_tokens(answer), squad_tokens(reference)
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


class _WordTokenizer:
    """rouge-score's tokenizer interface: `tokenize(text) -> list[str]`."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(str(text or "").lower())


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_WordTokenizer())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure, 0 to 1 (0 when either side has no words, 1 when neither has)."""
    tokenizer = _WordTokenizer()
    if not tokenizer.tokenize(answer) and not tokenizer.tokenize(reference):
        return 1.0
    return float(_rouge().score(str(reference or ""), str(answer or ""))["rougeL"].fmeasure)


def chrf(answer: str, reference: str) -> float:
    """Sentence-level chrF, 0 to 100 (100 when both sides are empty)."""
    if not str(answer or "").strip() and not str(reference or "").strip():
        return 100.0
    return float(_chrf_metric().sentence_score(str(answer or ""), [str(reference or "")]).score)


def corpus_chrf(answers: list[str], references: list[str]) -> float | None:
    """chrF over all rows at once (character n-gram statistics summed, then one F-score), 0 to 100."""
    if not answers:
        return None
    return float(_chrf_metric().corpus_score([str(a or "") for a in answers],
                                             [[str(r or "") for r in references]]).score)


@lru_cache(maxsize=1)
def _chrf_metric():
    from sacrebleu.metrics import CHRF
    return CHRF()
