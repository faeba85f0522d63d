"""`dates-demo`: a task with exactly one correct short answer, so accuracy needs no judge. Each row asks for an ISO
date in words ("Write 2024-03-05 in words." -> "5 March 2024": day without a leading zero, the month's English
name, the year). The bundled 135M model does not answer in this form by itself; a LoRA learns it in about a
hundred steps. `heldout_pairs()` are further dates, none of them in the training rows, whose answers a
benchmark (bench/claims.py) checks by exact match after greedy generation.
"""
from __future__ import annotations

import random
from datetime import date, timedelta

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
ASKS = ("Write {iso} in words.", "{iso} in words?", "Spell out the date {iso}.", "Write the date {iso} in words.")
FIRST, DAYS = date(1950, 1, 1), 100 * 365      # dates from 1950 to 2049
ROWS, HELDOUT = 400, 40


def in_words(day: date) -> str:
    """The one correct answer: '5 March 2024'."""
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def _dates(seed: int, count: int, avoid: set) -> list[date]:
    rng, out = random.Random(seed), []
    while len(out) < count:
        day = FIRST + timedelta(days=rng.randrange(DAYS))
        if day not in avoid:
            avoid.add(day)
            out.append(day)
    return out


def _split() -> tuple[list[date], list[date]]:
    """(training dates, held-out dates): disjoint, fixed."""
    seen: set = set()
    heldout = _dates(7, HELDOUT, seen)
    return _dates(0, ROWS, seen), heldout


def _question(day: date, rng: random.Random) -> str:
    return rng.choice(ASKS).format(iso=day.isoformat())


def date_rows(seed: int = 0) -> list[dict]:
    """400 single-turn conversations, one date each (never a held-out one)."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": _question(day, rng)},
                          {"role": "assistant", "content": in_words(day)}]} for day in _split()[0]]


def heldout_pairs() -> list[tuple[str, str]]:
    """40 (question, answer) pairs on dates that no training row has."""
    rng = random.Random(1)
    return [(_question(day, rng), in_words(day)) for day in _split()[1]]


def exact(answer: str, reference: str) -> bool:
    """Exact match after trimming whitespace and a final full stop."""
    return answer.strip().rstrip(".").strip() == reference
