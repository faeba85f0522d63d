"""The whole report on the tiny model: every section in one eval.json, a section that cannot run keeps its one
sentence while the others are saved, a report where nothing can run leaves the last good eval.json alone, and
the export card, the leaderboard and the summary read what was saved."""
from __future__ import annotations

import json
import socket

import pytest

from backend.evaluate import report as reports
from backend.evaluate.common import EvalError


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]           # closed again when the block ends: nothing listens there


def test_every_section_in_one_report_and_a_failing_one_keeps_its_sentence(lora_job, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("The river flows to the sea. Mountains rise above the valley. " * 8, encoding="utf-8")
    options = reports.EvalOptions(benchmarks="studio_arith", corpus_path=str(text), max_rows=4, max_new_tokens=4,
                                  batch_size=4, judge_url=f"http://127.0.0.1:{_closed_port()}/v1",
                                  judge_model="judge", judge_key="sk-secret-never-saved")
    seen = []
    report = reports.run_report(lora_job, options, lambda fraction, line: seen.append((fraction, line)))

    sections = report["sections"]
    assert {"task", "forgetting", "corpus", "benchmarks", "judge"} <= set(sections)
    assert "formats" not in sections               # the identity demo has no tools, JSON or <think>: nothing to check
    for name in ("task", "forgetting", "corpus", "benchmarks"):
        assert "error" not in sections[name], sections[name]
        assert sections[name]["metrics"], name
    assert "127.0.0.1" in sections["judge"]["error"]                      # one sentence that names the endpoint
    assert reports.errors_of(report) and reports.errors_of(report)[0].startswith("LLM judge: ")
    assert [v["key"] for v in report["variants"]] == ["base", "adapter"]

    saved = reports.read_report(lora_job)
    assert saved == json.loads(json.dumps(report, default=str))
    assert "sk-secret-never-saved" not in reports.report_path(lora_job).read_text()
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and any("ETA" in line for _, line in seen)

    names = {(m["section"], m["name"]) for m in reports.all_metrics(report)}
    assert {("task", "exact_match"), ("task", "loss"), ("forgetting", "kl_per_token"),
            ("forgetting", "changed_answers"), ("corpus", "perplexity")} <= names
    assert any(section == "benchmarks" for section, _ in names)
    lines = reports.summary_lines(report)
    assert len(lines) == len(reports.all_metrics(report)) and any(line.startswith("exact match") for line in lines)

    card = reports.card_section(report, exported=report["adapter"])
    assert card.startswith("## Quality report") and "skipped: LLM judge" in card and "exact match" in card
    assert "this export is of" in reports.card_section(report, exported="checkpoint-1")
    board = reports.leaderboard()
    assert [row["job"] for row in board] == [lora_job] and "task/exact_match" in board[0]

    # nothing can run this time: one sentence, and the report above is still the one on disk
    before = reports.report_path(lora_job).read_bytes()
    bad = reports.EvalOptions(task=False, forgetting=False, formats=False, corpus_path=str(tmp_path / "missing.txt"))
    with pytest.raises(EvalError, match="missing.txt"):
        reports.run_report(lora_job, bad)
    assert reports.report_path(lora_job).read_bytes() == before
    assert not list(reports.report_path(lora_job).parent.glob(".eval.json*"))


def test_bad_options_and_jobs_get_one_sentence_before_any_model_loads(lora_job):
    with pytest.raises(EvalError, match="no job 'nope'"):
        reports.run_report("nope")
    with pytest.raises(EvalError, match="nothing to run"):
        reports.run_report(lora_job, reports.EvalOptions(task=False, forgetting=False, formats=False))
    with pytest.raises(EvalError, match="judge_model"):
        reports.run_report(lora_job, reports.EvalOptions(judge_url="http://127.0.0.1:9/v1"))
    with pytest.raises(EvalError, match="same job"):
        reports.run_report(lora_job, reports.EvalOptions(compare_job=lora_job, max_rows=2))
    assert reports.read_report(lora_job) is None
