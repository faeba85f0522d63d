"""Shared UI helpers: one-sentence errors (never a stack in the page), small formatting helpers, and the
choice lists several tabs offer (datasets, jobs with an adapter), so that tabs never import each other.

No gradio import here: these are used by handlers that tests call without a browser.
"""
from __future__ import annotations

import functools
import logging
import time

log = logging.getLogger("lorastudio.ui")


class UserError(ValueError):
    """A problem the user can fix; the message is shown as is."""


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:500]


def readable(error: BaseException) -> str:
    """The sentence shown in the UI for any backend error (details go to the log)."""
    if isinstance(error, (UserError, ValueError, FileNotFoundError, PermissionError)):
        return one_line(error)
    return f"{type(error).__name__}: {one_line(error)}"


def guarded(fallback):
    """Decorator for handlers: an exception becomes `fallback(message)` instead of a red stack."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the user gets one sentence; the log gets the trace
                log.exception("handler %s failed", fn.__name__)
                return fallback(readable(error))
        return inner
    return wrap


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def fmt_count(count: int | float | None) -> str:
    """A big count for people: 4884480 -> "4.88 M (4,884,480)", 12345 -> "12,345", 950 -> "950"."""
    if count is None:
        return ""
    count = int(count)
    for size, unit in ((10 ** 9, "B"), (10 ** 6, "M")):
        if abs(count) >= size:
            return f"{count / size:.3g} {unit} ({count:,})"
    return f"{count:,}"


def fmt_seconds(seconds: float | None) -> str:
    """A duration in seconds for people: 73.74 -> "73.7 s", 0.42 -> "0.42 s", 4000 -> "1 h 06 min"."""
    if seconds is None:
        return ""
    if seconds >= 3600:
        return fmt_duration(seconds)
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_value(key: str, value) -> str:
    """`label value` of one result / fact field (e.g. run results): the unit suffix of the key becomes the unit
    ("wall_time_s" 73.74 -> "wall time 73.7 s"), counts get thousands separators and M / B, floats 4 digits."""
    label = key.replace("_", " ")
    if value is None:
        return label
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{label} {value}"
    if key.endswith("_s"):
        return f"{label[:-2]} {fmt_seconds(value)}"
    if isinstance(value, int) or key.endswith(("parameters", "tokens", "rows", "steps")):
        return f"{label} {fmt_count(value)}"
    return f"{label} {value:.4g}" if abs(value) >= 1 or value == 0 else f"{label} {value:.4f}"


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- choice lists shared by several tabs


def pick(choices: list[tuple[str, str]], current: str | None, default_index: int = 0) -> str | None:
    """`current` when it is still among the (label, value) choices, else the one at default_index (or the first)."""
    ids = [c[1] for c in choices]
    if current in ids:
        return current
    return ids[default_index] if len(ids) > default_index else (ids[0] if ids else None)


def usable_job_choices() -> list[tuple[str, str]]:
    """(label, job id) of every job with an adapter (final, or a checkpoint while it trains), newest first
    (the Playground and Export tabs)."""
    from backend import jobs
    from backend.models import adapters

    out = []
    for job in jobs.list_jobs():
        try:
            source = adapters.adapter_source(job.id)
        except adapters.AdapterError:
            continue
        name = f" · {job.name}" if job.name else ""
        out.append((f"{job.id} · {job.status}{name} · {source.label}", job.id))
    return out


def dataset_choices() -> list[tuple[str, str]]:
    """(label, value) of every registered dataset: name, rows, kind, demo (the Data and Train tabs). The value
    is the name a dataset was saved under (names resolve wherever ids do, and read better in the YAML, the
    command and the Jobs tab), else its id."""
    from backend import data

    out = []
    for meta in data.list_datasets():
        named = bool(meta.get("named") or meta.get("demo")) and meta.get("name")
        value = meta["name"] if named else meta["id"]
        label = meta["name"] if named else f"{meta.get('name') or meta['id']} ({meta['id']})"
        label += f" · {meta.get('rows', '?')} rows · {meta.get('kind') or '?'}"
        if meta.get("demo"):
            label += " · demo"
        out.append((label, value))
    return out
