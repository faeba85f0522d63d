"""The playground: one conversation answered by base, adapter and merged side by side (or job A vs job B).

A Session holds one loaded base with the job's adapter (the base column is the same weights with the adapter
disabled, no second copy) and the merged model: the exported merged folder when one exists, otherwise the
adapter merged into a full-precision copy of the base. Loading a session also runs the merge verification
(largest adapter-vs-merged logit difference and greedy equality on a few prompts). A method whose row says
mergeable=False (prompt tuning) gets no merged model: its merged column answers with the row's one sentence and the
merge check is skipped with it.
"""
from __future__ import annotations

import csv
import io
import logging
import threading
import time
from dataclasses import dataclass, field

from backend import workspace
from backend.models import adapters, methods
from backend.serve.chat import AnswerStats, GenerationSettings, stream_answer
from backend.export import VERIFY_PROMPTS, MergeCheck, follow, merge_check, probe

log = logging.getLogger("lorastudio")

BASE, ADAPTER, MERGED = "base", "adapter", "merged"
MAX_BATCH_PROMPTS = 200


@dataclass
class Column:
    key: str            # base | adapter | merged | a | b
    title: str
    model: object
    use_adapter: bool   # False: the PEFT model with its adapter disabled
    adapter_name: str | None = None
    unavailable: str = ""   # instead of answering, this sentence (a merged column of a method that cannot merge)


@dataclass
class Session:
    job_ids: tuple[str, ...]
    columns: list[Column]
    tokenizer: object
    check: MergeCheck | None = None
    check_skipped: str = ""  # why there is no merge check (the method cannot be merged)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def column(self, key: str) -> Column:
        for column in self.columns:
            if column.key == key:
                return column
        raise KeyError(key)

    def stream(self, key: str, messages: list[dict], settings: GenerationSettings | None = None):
        """Yield AnswerStats for one column (see backend.serve.chat.stream_answer)."""
        column = self.column(key)
        if column.unavailable:
            yield AnswerStats(text=column.unavailable, done=True)
            return
        with self.lock:   # one generation at a time: switching / disabling adapters is model-wide
            if column.adapter_name:
                column.model.set_adapter(column.adapter_name)
            yield from stream_answer(column.model, self.tokenizer, messages, settings, use_adapter=column.use_adapter)

    def answer_all(self, messages: list[dict], settings: GenerationSettings | None = None) -> dict[str, AnswerStats]:
        out = {}
        for column in self.columns:
            for stats in self.stream(column.key, messages, settings):
                out[column.key] = stats
        return out


_cache: dict = {"key": None, "session": None}
_cache_lock = threading.Lock()


def open_session(job_id: str, compare_job_id: str | None = None, verify: bool = True) -> Session:
    """The session for a job (or two jobs), kept loaded until another one is asked for."""
    key = (job_id, compare_job_id or None, _adapter_stamp(job_id), _adapter_stamp(compare_job_id))
    with _cache_lock:
        if _cache["key"] == key:
            return _cache["session"]
        _cache.update(key=None, session=None)   # free the old models before loading new ones
        session = compare_session(job_id, compare_job_id) if compare_job_id else job_session(job_id, verify)
        _cache.update(key=key, session=session)
        return session


def job_session(job_id: str, verify: bool = True) -> Session:
    source = adapters.adapter_source(job_id)
    tokenizer = adapters.load_tokenizer(source)
    model = adapters.load_with_adapters([source], ["adapter"])
    method = methods.spec(source.config.method)
    if method.mergeable:
        merged, merged_title, _ = _merged_model(source)
        merged_column = Column(MERGED, merged_title, merged, use_adapter=True)
    else:
        merged_column = Column(MERGED, "merged · not mergeable", None, use_adapter=False,
                               unavailable=method.not_mergeable_reason)
    columns = [Column(BASE, f"base · {source.config.model}", model, use_adapter=False),
               Column(ADAPTER, f"adapter · {source.label}", model, use_adapter=True, adapter_name="adapter"),
               merged_column]
    notes = []
    if source.four_bit:
        notes.append("base and adapter run on the 4-bit base as in training; merged is de-quantised full precision")
    session = Session((source.job_id,), columns, tokenizer, notes=notes)
    if not method.mergeable:
        session.check_skipped = f"merge check skipped: {method.not_mergeable_reason}"
    elif verify:
        session.check = verify_session(session)
    return session


def compare_session(job_a: str, job_b: str) -> Session:
    """Job A's adapter next to job B's on one loaded base (both adapters loaded by name)."""
    a, b = adapters.adapter_source(job_a), adapters.adapter_source(job_b)
    model = adapters.load_with_adapters([a, b], ["a", "b"])
    notes = []
    if a.four_bit != b.four_bit:
        notes.append("one job trained on a 4-bit base: both run on the full-precision base here")
    columns = [Column(BASE, f"base · {a.config.model}", model, use_adapter=False),
               Column("a", f"A · {a.job_id} ({a.config.method} {a.config.stage})", model, True, "a"),
               Column("b", f"B · {b.job_id} ({b.config.method} {b.config.stage})", model, True, "b")]
    return Session((a.job_id, b.job_id), columns, adapters.load_tokenizer(a), notes=notes)


def verify_session(session: Session, prompts=VERIFY_PROMPTS) -> MergeCheck:
    """Adapter column vs merged column on the same tokens: largest logit difference, greedy equality."""
    adapter, merged = session.column(ADAPTER), session.column(MERGED)
    with session.lock:
        adapter.model.set_adapter("adapter")
        reference = probe(adapter.model, session.tokenizer, prompts, max_new_tokens=16)
        result = follow(merged.model, session.tokenizer, reference.prompt_lengths, reference.sequences)
    dtype = str(next(merged.model.parameters()).dtype).replace("torch.", "")
    check = merge_check(dtype, prompts, reference, result)
    log.info("playground merge check for %s: %s", session.job_ids[0], check.summary())
    return check


def _merged_model(source):
    """The exported merged folder when there is one (what the user downloads), else a merged copy."""
    from transformers import AutoModelForCausalLM

    out = workspace.exports_dir() / source.job_id
    exported = sorted((p for p in out.glob(f"{source.job_id}-merged-*") if (p / "config.json").is_file()),
                      key=lambda p: p.stat().st_mtime, reverse=True) if out.is_dir() else []
    if exported and source.final:
        model = AutoModelForCausalLM.from_pretrained(exported[0], dtype=adapters.compute_dtype(),
                                                     trust_remote_code=False, use_safetensors=True)
        model.to(adapters.device()).eval()
        return model, f"merged · exported {exported[0].name}", []
    dtype = adapters.compute_dtype()
    _, merge = adapters.load_merged(source, str(dtype).replace("torch.", ""), model_dtype=dtype)
    merged = merge().to(adapters.device())
    return merged, "merged · in-memory copy (not exported yet)", []


def _adapter_stamp(job_id: str | None):
    """Changes when the job's adapter changes (a new checkpoint, the final adapter, an export)."""
    if not job_id:
        return None
    try:
        source = adapters.adapter_source(job_id)
    except adapters.AdapterError:
        return None
    exports = workspace.exports_dir() / source.job_id
    return (str(source.path), source.path.stat().st_mtime, exports.stat().st_mtime if exports.exists() else 0)


def close_session() -> None:
    with _cache_lock:
        _cache.update(key=None, session=None)


def job_tools(job_id: str) -> str:
    """The function schemas of the job's training data (the first row that declares tools) as JSON text, for
    the playground's tools box; '' when its data has none or cannot be read."""
    import json

    from backend import data

    source = adapters.adapter_source(job_id)
    try:
        rows = data.load_for_stage(source.config.dataset, str(source.config.stage), skip_invalid=True).rows
    except Exception:  # noqa: BLE001 - a dataset deleted or changed since: the box stays empty
        return ""
    tools = next((row["tools"] for row in rows if row.get("tools")), None)
    return json.dumps(tools, ensure_ascii=False, indent=1) if tools else ""


# ---------------------------------------------------------------- batch compare

@dataclass
class BatchPrompt:
    messages: list[dict]
    reference: str = ""

    @property
    def text(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


def prompts_from_text(text: str) -> list[BatchPrompt]:
    """One prompt per non-empty line."""
    return [BatchPrompt([{"role": "user", "content": line.strip()}]) for line in text.splitlines() if line.strip()]


def prompts_from_file(path) -> list[BatchPrompt]:
    """A .txt (one prompt per line), or a .jsonl / .csv with a `prompt` column (and optional `reference`), or
    chat rows with `messages` (the last assistant turn becomes the reference)."""
    import json
    from pathlib import Path

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return prompts_from_text(text)
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    elif path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" \
            else json.loads(text)
    else:
        raise ValueError(f"{path.name}: prompts must be a .txt, .csv, .jsonl or .json file")
    prompts = []
    for number, row in enumerate(rows, start=1):
        prompt = _row_prompt(row)
        if prompt is None:
            raise ValueError(f"{path.name} row {number}: no `prompt` or `messages` field; give each row a prompt")
        prompts.append(prompt)
    return prompts


def _row_prompt(row: dict) -> BatchPrompt | None:
    if isinstance(row.get("messages"), list):
        messages = [m for m in row["messages"] if isinstance(m, dict)]
        reference = ""
        if messages and messages[-1].get("role") == "assistant":
            reference = str(messages[-1].get("content", ""))
            messages = messages[:-1]
        return BatchPrompt(messages, reference) if messages else None
    if row.get("prompt"):
        prompt = row["prompt"]
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        reference = row.get("reference") or row.get("completion") or row.get("chosen") or ""
        if isinstance(reference, list):
            reference = reference[-1].get("content", "") if reference else ""
        return BatchPrompt(messages, str(reference))
    return None


def eval_prompts(job_id: str, limit: int = 50) -> list[BatchPrompt]:
    """The first `limit` rows of the job's eval split, rebuilt exactly as the stage split it (same filter, same
    seeded shuffle: backend.evaluate.heldout, the one implementation); KTO references carry their label."""
    from backend.evaluate import heldout

    source = adapters.adapter_source(job_id)
    out = []
    for row in heldout.split(source.config, source.job_id).rows[:limit]:
        if row.label is not None:
            reference = f"[{'desirable' if row.label else 'undesirable'}] {row.completion}"
        else:
            reference = row.reference
        out.append(BatchPrompt(row.messages, reference))
    return out


def batch_compare(session: Session, prompts: list[BatchPrompt], settings: GenerationSettings | None = None,
                  progress=None) -> list[dict]:
    """Every prompt through every column: one row per prompt (prompt, reference, one answer per column)."""
    if not prompts:
        raise ValueError("no prompts to compare: type some (one per line), upload a file, or use the eval split")
    if len(prompts) > MAX_BATCH_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts; at most {MAX_BATCH_PROMPTS} per batch, split the list")
    progress = progress or (lambda fraction, text: None)
    rows, total = [], len(prompts) * len(session.columns)
    for i, prompt in enumerate(prompts):
        row = {"prompt": prompt.text, "reference": prompt.reference}
        for j, column in enumerate(session.columns):
            progress((i * len(session.columns) + j) / total, f"prompt {i + 1}/{len(prompts)} · {column.key}")
            last = AnswerStats()
            for last in session.stream(column.key, prompt.messages, settings):
                pass
            row[column.key] = last.text
        rows.append(row)
    progress(1.0, "done")
    return rows


def write_batch_csv(rows: list[dict], job_id: str) -> "Path":  # noqa: F821
    """The batch table as CSV under exports/<job_id>/ (the only folder the UI serves)."""
    folder = workspace.exports_dir() / job_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}-compare-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
