"""A trainer callback for tests that look at the model just before the first step and just after the last."""
from __future__ import annotations

from transformers import TrainerCallback


class ModelProbe(TrainerCallback):
    """Calls on_model(model, "before_train" | "after_train")."""

    def __init__(self, on_model):
        self.on_model = on_model

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.on_model(model, "before_train")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.on_model(model, "after_train")


def probes(on_model) -> list:
    return [ModelProbe(on_model)] if on_model else []
