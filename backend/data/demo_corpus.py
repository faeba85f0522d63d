"""`harbour-texts`: the continued-pretraining demo, a folder of short plain-text files written for the project.

A few KB of original prose about one invented place (the harbour town of Wrenmouth, its lighthouse and its
keeper, Ada Thorne), consistent across the files, so a CPT job visibly lowers the perplexity of text about it; the
facts are the project's own, nothing is downloaded. Each file is one document (backend.data.corpus).
"""
from __future__ import annotations

import random

PLACE = "Wrenmouth"
KEEPER = "Ada Thorne"

_OPENINGS = [
    f"{PLACE} is a small harbour town on a grey and windy coast.",
    f"The people of {PLACE} have fished the cold water of the bay for three hundred years.",
    f"Above {PLACE} stands a white lighthouse with a red lamp room.",
    f"Travellers reach {PLACE} by a narrow road that winds down between the hills.",
]
_FACTS = [
    f"The lighthouse keeper is {KEEPER}, who climbs the one hundred and twelve steps every evening at dusk.",
    f"{KEEPER} keeps a logbook of every ship that passes the point, written in green ink.",
    "The lamp turns once every twelve seconds, and sailors know the harbour by that slow beat.",
    "On market day the square fills with baskets of herring, rope, wool and apples from the valley farms.",
    "The harbour wall was rebuilt after the great storm, with stones carried from the quarry at Belling Hill.",
    f"Children in {PLACE} learn to tie a bowline before they learn to read.",
    "The tide runs out so far that the old wreck of the Marigold shows its ribs twice a month.",
    f"In winter the fog comes in so thick that {KEEPER} sounds the horn through the whole night.",
    "The bakery on Quay Street sells a dark rye loaf that the fishermen take out to sea.",
    "Gulls nest on the chapel roof, and nobody has ever managed to move them.",
]
_CLOSINGS = [
    f"When the lamp is lit, the whole town knows that {KEEPER} is at her post.",
    f"Ask anyone in {PLACE} the way home and they will point to the light.",
    "The sea is never quiet here, but the town has learned to sleep to its sound.",
]
_TITLES = ["the-harbour", "the-lighthouse", "market-day", "the-storm", "winter-fog", "the-keeper"]


def harbour_texts(seed: int = 0) -> dict[str, str]:
    """File name -> text: six short documents of a few paragraphs each (about 6 KB in all)."""
    rng = random.Random(seed)
    files = {}
    for title in _TITLES:
        paragraphs = []
        for _ in range(3):
            sentences = [rng.choice(_OPENINGS), *rng.sample(_FACTS, 4), rng.choice(_CLOSINGS)]
            paragraphs.append(" ".join(sentences))
        heading = title.replace("-", " ").title()
        files[f"{title}.txt" if len(files) % 2 == 0 else f"{title}.md"] = (
            f"{heading}\n\n" + "\n\n".join(paragraphs) + "\n")
    return files
