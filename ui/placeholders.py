"""Playground and Export tabs: placeholders until the playground / export issue lands (then wire
backend.chat and backend.export here; see ui/INTEGRATION.md)."""
from __future__ import annotations

from dataclasses import dataclass

PLAYGROUND_TEXT = ("### Playground\nCompare base / adapter / merged answers side by side. Not in this release yet: "
                   "until then, from a terminal: `lorastudio chat JOB_ID --prompt \"Who are you?\"`.")
EXPORT_TEXT = ("### Export\nMerge an adapter into its base model and download it. Not in this release yet: the "
               "adapter of a completed job is in `runs/<job_id>/adapter/` (PEFT format) in the workspace.")


@dataclass
class Placeholder:
    text: object = None


def build_playground(gr) -> Placeholder:
    return Placeholder(text=gr.Markdown(PLAYGROUND_TEXT, elem_classes=["ls-playground"]))


def build_export(gr) -> Placeholder:
    return Placeholder(text=gr.Markdown(EXPORT_TEXT, elem_classes=["ls-export"]))
