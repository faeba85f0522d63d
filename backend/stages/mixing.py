"""Datasets mixed into a job's training rows by share (`mix`), e.g. 10 % replay against forgetting.

What an epoch is: every training row of the job's own `dataset` once, plus each mixed source's rows in
proportion to its share, so that the shares hold in every epoch: with n own training rows and shares s_i,
source i adds round(n * s_i / (1 - sum s)) rows. They are drawn from a seeded permutation of the source (the
job's seed plus the source's place in the mix), without repeats while the source has enough rows; a source
smaller than its share is cycled through again, and the facts say so. Mixed rows are training rows only: the
held-out rows (eval loss, playground, Evaluate tab) stay the job's own dataset's, which is what the user tunes
for. Each source goes through the job's stage recipe, so a source must suit the stage (one sentence if not).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from backend import data as datasets_backend
from backend.config import JobConfig

log = logging.getLogger("lorastudio")


@dataclass
class MixedSource:
    name: str                # as the job names it (`replay`, a saved name, an id, a path)
    dataset_id: str
    sha256: str
    share: float
    available: int           # the source's examples for this stage
    used: int                # rows it adds to the training set
    repeated: bool           # fewer available than used: cycled through more than once
    warning: str = ""        # e.g. it answers without the reasoning the job's own rows have

    def to_dict(self) -> dict:
        out = {"name": self.name, "id": self.dataset_id, "sha256": self.sha256, "share": self.share,
               "available": self.available, "rows": self.used, "repeated": self.repeated}
        return {**out, "warning": self.warning} if self.warning else out


def rows_for(share: float, own_rows: int, total_share: float) -> int:
    """How many rows a source of `share` adds to `own_rows` when all mixed sources share `total_share`."""
    return round(own_rows * share / (1.0 - total_share))


def reasoning_share(rows: list[dict]) -> float:
    """The share of rows whose trained answers have a non-empty reasoning section."""
    from backend.data.toolcalls import row_shape

    return sum(row_shape(row)[0] == "with" for row in rows) / len(rows) if rows else 0.0


def reasoning_warning(name: str, share: float, own: float, source: float) -> str:
    """One sentence when the job's own rows mostly reason and a mixed source mostly does not, else ''."""
    if own < 0.5 or source >= 0.5:
        return ""
    return (f"{own:.0%} of the job's own rows answer with a <think> section but only {source:.0%} of {name}'s do: "
            f"mixed in at {share:.0%} they teach the model that reasoning is optional, so it may skip it; mix in a "
            "source whose answers reason, or lower its share")


def mix_in(config: JobConfig, recipe, tokenizer, own_rows: int, progress=None,
           own_dataset_rows: list[dict] | None = None) -> tuple[list[dict], list[MixedSource]]:
    """(the mixed-in training examples, one MixedSource per source) for a job with `mix`; ([], []) without.
    `own_dataset_rows`: the job's own canonical rows, to compare their reasoning with each source's."""
    if not config.mix:
        return [], []
    from backend.data.replay import REPLAY, ensure_replay

    own_reasoning = reasoning_share(own_dataset_rows or [])
    total = sum(config.mix.values())
    examples, sources = [], []
    for place, (name, share) in enumerate(config.mix.items(), start=1):
        spec = ensure_replay(config.model, config.chat_template, progress) if name == REPLAY else name
        dataset = datasets_backend.load_for_stage(spec, config.stage)
        own = [example for row in dataset.rows if (example := recipe.example(config, tokenizer, row)) is not None]
        own = [example for _, example in recipe.pack(config, tokenizer, [({}, example) for example in own])]
        if not own:
            raise datasets_backend.DataError(f"mix: dataset '{name}' has no row that fits training.max_length="
                                             f"{config.training.max_length}; raise max_length or leave it out")
        wanted = rows_for(share, own_rows, total)
        order = list(range(len(own)))
        random.Random(config.training.seed + place).shuffle(order)
        picked = [own[order[i % len(own)]] for i in range(wanted)]
        examples += picked
        warning = reasoning_warning(name, share, own_reasoning, reasoning_share(dataset.rows))
        if warning:
            log.warning("mix: %s", warning)
        sources.append(MixedSource(name, dataset.id, dataset.content_hash, share, len(own), wanted,
                                   wanted > len(own), warning))
        log.info("mix: %d rows of %s (share %.0f %%, %d available%s)", wanted, name, share * 100, len(own),
                 ", cycled through more than once" if wanted > len(own) else "")
    return examples, sources
