"""The quality report: which sections to run (`EvalOptions`), running them over one loaded context, and eval.json.

A report is one JSON object saved as runs/<job_id>/eval.json (written to a temporary name and renamed, so a
failed or killed report never replaces the last good one). A section that cannot run (no eval split, an
unreachable judge, a benchmark that needs the hub) keeps its one sentence in the report and the other
sections still run; only when nothing could run is nothing written.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from backend import jobs, workspace
from backend.evaluate.common import EvalError, Progress, SectionResult, range_problems

log = logging.getLogger("lorastudio")

REPORT_FILE = "eval.json"
SECTIONS = ("task", "forgetting", "formats", "corpus", "benchmarks", "judge")
# how much of the progress bar each section gets (roughly its share of the time on the bundled model)
SECTION_WEIGHTS = {"load": 0.5, "task": 3, "formats": 1, "forgetting": 3, "corpus": 1, "benchmarks": 2, "judge": 2}
SECTION_TITLES = {"task": "held-out rows", "preference": "preference pairs", "forgetting": "forgetting",
                  "formats": "format checks", "corpus": "your text", "benchmarks": "benchmarks (lm-eval)",
                  "judge": "LLM judge"}


@dataclass
class EvalOptions:
    """What to run; one field = one control in the Evaluate tab and one `lorastudio eval` flag."""
    compare_job: str = field(default="", metadata={
        "help": "A second job on the same base model, shown as a third column (optional)."})
    task: bool = field(default=True, metadata={
        "help": "The job's own held-out rows: loss, perplexity, exact match, token F1, ROUGE-L, chrF, length."})
    forgetting: bool = field(default=True, metadata={
        "help": "General prompts the studio ships: KL from the base on the base's answers, changed answers."})
    formats: bool = field(default=True, metadata={
        "help": "Tool calls, JSON and <think> sections, where the held-out rows have them."})
    benchmarks: str = field(default="", metadata={
        "help": "lm-evaluation-harness tasks, comma-separated (e.g. studio_arith); empty = none."})
    corpus_path: str = field(default="", metadata={
        "help": "A plain-text file (UTF-8) of your own: perplexity of base and adapter on it (optional)."})
    judge_url: str = field(default="", metadata={
        "help": "An OpenAI-compatible endpoint (…/v1) for a pairwise LLM judge; empty = no judge."})
    judge_model: str = field(default="", metadata={"help": "The judge endpoint's model name."})
    judge_key: str = field(default="", metadata={
        "help": "The judge endpoint's API key, if it needs one (never saved in the report)."})
    max_rows: int = field(default=50, metadata={
        "help": "Rows per section at most (a seeded subset when there are more).", "min": 1, "max": 1000})
    max_new_tokens: int = field(default=64, metadata={
        "help": "Longest generated answer in tokens (greedy decoding, the playground's settings).",
        "min": 1, "max": 2048})
    batch_size: int = field(default=8, metadata={
        "help": "Answers generated and scored together (left padding); 1 = one at a time.", "min": 1, "max": 128})

    def problems(self) -> list[str]:
        out = range_problems(self)
        if self.judge_url and not self.judge_model:
            out.append("judge_model: name the judge endpoint's model (e.g. the one `GET /v1/models` lists)")
        if not (self.task or self.forgetting or self.formats or self.benchmarks or self.corpus_path
                or self.judge_url):
            out.append("nothing to run: tick at least one section")
        return out

    def public(self) -> dict:
        """The options as saved in the report: the judge's key left out."""
        data = asdict(self)
        data.pop("judge_key", None)
        return data


def report_path(job_id: str) -> Path:
    return workspace.run_dir(job_id) / REPORT_FILE


def read_report(job_id: str) -> dict | None:
    try:
        return json.loads(report_path(job_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_report(job_id: str, report: dict) -> Path:
    """eval.json, atomically: a temporary file in the same folder, then a rename."""
    path = report_path(job_id)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    temporary.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    temporary.replace(path)
    return path


def run_report(job_id: str, options: EvalOptions | None = None, callback=None) -> dict:
    """Load the job's base and adapter(s) once, run the ticked sections, save and return the report.

    `callback(fraction, text)` sees the progress with an ETA. Raises EvalError (one sentence) when the job
    cannot be evaluated at all (no such job, no adapter yet) or when every section failed; the previous
    eval.json is then left as it was.
    """
    from backend.evaluate.context import load_context
    from backend.serve.chat import GenerationSettings

    options = options or EvalOptions()
    problems = options.problems()
    if problems:
        raise EvalError("; ".join(problems))
    job = jobs.get(job_id)
    if job is None:
        raise EvalError(f"no job '{job_id}' in this workspace; see `lorastudio jobs list` for the jobs there are")
    planned = ["load"] + [name for name, ticked in (
        ("task", options.task), ("formats", options.formats), ("forgetting", options.forgetting),
        ("corpus", options.corpus_path), ("benchmarks", options.benchmarks), ("judge", options.judge_url)) if ticked]
    edges, whole = {}, sum(SECTION_WEIGHTS[name] for name in planned)
    low = 0.0
    for name in planned:
        edges[name] = (low / whole, (low + SECTION_WEIGHTS[name]) / whole)
        low += SECTION_WEIGHTS[name]
    progress = Progress(callback, total=1)
    progress.band(*edges["load"])
    progress.add_total(1)
    started = time.perf_counter()
    progress.report("loading the base model and the adapter")
    ctx = load_context(job.id, options.compare_job or None,
                       settings=GenerationSettings(max_new_tokens=options.max_new_tokens), max_rows=options.max_rows,
                       batch_size=options.batch_size)
    progress.advance(1, "model loaded")
    sections: dict[str, dict] = {}
    results: dict[str, SectionResult] = {}

    def attempt(name: str, fn):
        progress.band(*edges[name])
        section_started = time.perf_counter()
        try:
            result = fn()
        except EvalError as error:
            sections[name] = {"section": name, "error": str(error)}
            log.warning("quality report of %s: %s skipped: %s", job.id, name, error)
            return None
        if result is None:
            return None
        result.seconds = round(time.perf_counter() - section_started, 2)
        results[name] = result
        sections[name] = result.to_dict()
        return result

    if options.task:
        from backend.evaluate import task as task_section
        attempt("task", lambda: task_section.run(ctx, progress))
    if options.formats and "error" not in sections.get("task", {}):
        from backend.evaluate import formats, heldout
        attempt("formats", lambda: formats.run(ctx, progress, results.get("task"), heldout.load_rows(ctx)))
    if options.forgetting:
        from backend.evaluate import forgetting
        attempt("forgetting", lambda: forgetting.run(ctx, progress))
    if options.corpus_path:
        from backend.evaluate import forgetting
        attempt("corpus", lambda: forgetting.corpus(ctx, progress, options.corpus_path))
    if options.benchmarks:
        from backend.evaluate import benchmarks
        tasks = [t.strip() for t in options.benchmarks.split(",") if t.strip()]
        attempt("benchmarks", lambda: benchmarks.run(ctx, progress, tasks, options.max_rows))
    if options.judge_url:
        from backend.evaluate import judge
        pairs = (results.get("task") or results.get("forgetting"))
        settings = judge.JudgeSettings(url=options.judge_url, model=options.judge_model,
                                       api_key=options.judge_key or "", max_rows=options.max_rows)
        if pairs is None:
            sections["judge"] = {"section": "judge", "error": "the judge compares answers from the held-out rows "
                                 "or the general prompts: tick one of those sections too"}
        else:
            attempt("judge", lambda: judge.run(ctx, progress, pairs.rows, settings))
    if not results:
        errors = [s["error"] for s in sections.values() if s.get("error")]
        raise EvalError(errors[0] if errors else "no section produced a result")
    report = {
        "job_id": job.id, "job_name": job.name, "stage": str(job.config.stage), "method": str(job.config.method),
        "model": job.config.model, "adapter": ctx.source.label, "adapter_is_final": ctx.source.final,
        "job_status": str(job.status), "compare_job": options.compare_job or None,
        "variants": [{"key": v.key, "title": v.title} for v in ctx.variants],
        "options": options.public(), "settings": asdict(ctx.settings),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - started, 1),
        "sections": sections,
    }
    if not ctx.source.final:
        report["caveat"] = (f"job {job.id} had not finished: this report is of its {ctx.source.label}, "
                            "not of a final adapter")
    write_report(job.id, report)
    progress.callback(1.0, f"report saved in {report['seconds']:.0f} s")
    return report


# ------------------------------------------------------------------ reading reports (UI, CLI, card, leaderboard)

def all_metrics(report: dict) -> list[dict]:
    """Every metric of every section that ran, in section order."""
    out = []
    for name in SECTIONS + ("preference",):
        section = report.get("sections", {}).get(name) or {}
        out.extend(section.get("metrics") or [])
    return out


def verdict(metric: dict, a: str = "base", b: str = "adapter") -> str | None:
    """'better' / 'worse' / 'same' for variant b against a on one metric (None without both values)."""
    values = metric.get("values") or {}
    first, second = values.get(a), values.get(b)
    if not isinstance(first, (int, float)) or not isinstance(second, (int, float)):
        return None
    if abs(second - first) <= 1e-9 * max(1.0, abs(first)):
        return "same"
    return "better" if (second > first) == bool(metric.get("higher_is_better")) else "worse"


def errors_of(report: dict) -> list[str]:
    return [f"{SECTION_TITLES.get(name, name)}: {section['error']}"
            for name, section in (report.get("sections") or {}).items() if section.get("error")]


def summary_lines(report: dict) -> list[str]:
    """One line per metric: 'exact match: base 0.10 → adapter 0.80 (better)'; used by the CLI and the card."""
    lines = []
    keys = [v["key"] for v in report.get("variants", [])]
    for metric in all_metrics(report):
        values = metric.get("values") or {}
        shown = " → ".join(f"{key} {_fmt(values.get(key))}" for key in keys if key in values)
        judged = verdict(metric)
        lines.append(f"{metric['label']} ({SECTION_TITLES.get(metric['section'], metric['section'])}): {shown}"
                     + (f" ({judged})" if judged else ""))
    return lines


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def leaderboard() -> list[dict]:
    """One row per job that has a report: its adapter's value of every metric (name 'section/metric')."""
    rows = []
    for job in jobs.list_jobs():
        report = read_report(job.id)
        if not report:
            continue
        row = {"job": job.id, "name": job.name or "", "method": str(job.config.method),
               "stage": str(job.config.stage), "adapter": report.get("adapter", "")}
        for metric in all_metrics(report):
            row[f"{metric['section']}/{metric['name']}"] = (metric.get("values") or {}).get("adapter")
        rows.append(row)
    return rows


def card_section(report: dict | None, exported: str | None = None) -> str:
    """The export card's "## Quality report" section ('' without a report): one line per metric, base vs
    adapter, and which adapter the report was of when that is not the one exported."""
    if not report:
        return ""
    lines = [f"## Quality report\n\nFrom `lorastudio eval` ({report.get('created', '')}, "
             f"{report.get('adapter', '')}); base = the same base model with the adapter off.\n"]
    if exported and report.get("adapter") and exported != report.get("adapter"):
        lines.append(f"> The report was made on the {report['adapter']}; this export is of the {exported}.\n")
    lines += [f"- {line}" for line in summary_lines(report)]
    lines += [f"- skipped: {error}" for error in errors_of(report)]
    return "\n".join(lines) + "\n\n"
