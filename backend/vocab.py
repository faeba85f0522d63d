"""The studio's vocabulary, named once: stages, methods, job statuses and phases, precisions, batching modes.

Each is a string enum, so a member compares equal to its value ("sft" == Stage.SFT), is written to YAML, JSON
and SQLite as that plain string, and reads back with Stage("sft"). Facts about a method live in one table
(backend.models.methods.METHODS); facts about a stage in its recipe (backend.stages).
"""
from __future__ import annotations

import enum


class StrEnum(str, enum.Enum):
    """enum.StrEnum for Python 3.10 too: str() and format() give the plain value."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Stage(StrEnum):
    SFT = "sft"
    DPO = "dpo"
    ORPO = "orpo"
    KTO = "kto"
    PRETRAIN = "pretrain"    # continued pretraining on raw text (backend/stages/pretrain.py)

    @property
    def is_preference(self) -> bool:
        """Trains on preference data (pairs or labelled answers) with the alignment settings."""
        return self in (Stage.DPO, Stage.ORPO, Stage.KTO)


class Method(StrEnum):
    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    QDORA = "qdora"
    PISSA = "pissa"
    VERA = "vera"
    IA3 = "ia3"
    LOHA = "loha"
    LOKR = "lokr"
    OFT = "oft"
    ADALORA = "adalora"
    OLORA = "olora"
    EVA = "eva"
    CORDA = "corda"
    LOFTQ = "loftq"            # qlora with LoftQ's start: the adapter cancels the 4-bit rounding error
    PROMPT_TUNING = "prompt_tuning"
    GALORE = "galore"          # full-rank training of the base's linear layers, low-rank optimizer state


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        """Nothing happens to the job any more unless the user resumes it."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
CLAIMABLE_STATUSES = (JobStatus.QUEUED, JobStatus.INTERRUPTED)      # a worker may take these
STOPPED_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED)


class Phase(StrEnum):
    """What a running job is doing now (the record's `phase`); `label()` is what the table, selector and CLI say."""
    LOADING = "loading"          # data, tokenizer, base model and adapter
    TRAINING = "training"
    EVALUATING = "evaluating"    # an eval pass: the record's phase_step / phase_total count its batches
    SAVING = "saving"            # the adapter, run.json and card

    def label(self, done: int = 0, total: int = 0) -> str:
        if self is Phase.EVALUATING and total:
            return f"evaluating {done}/{total}"
        return "loading model" if self is Phase.LOADING else self.value


class Control(StrEnum):
    """A cooperative stop request written to a running job's record."""
    CANCEL = "cancel"        # checkpoint, end cancelled
    PREEMPT = "preempt"      # checkpoint, end interrupted, queued again


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Batching(StrEnum):
    AUTO = "auto"
    PAD = "pad"
    GROUP_BY_LENGTH = "group_by_length"
    PADDING_FREE = "padding_free"
