"""Evaluate tab handlers on a saved report (no model): summary, metrics table and chart, rows with the ones that
got worse first, the CSV download, the leaderboard, and the form's values as EvalOptions."""
from __future__ import annotations

import csv

from backend import export, jobs
from backend.config import JobConfig
from backend.evaluate import report as reports
from ui import evaluate_tab


def saved_report(job_id: str) -> dict:
    report = {
        "job_id": job_id, "adapter": "final adapter", "variants": [{"key": "base", "title": "base"},
                                                                   {"key": "adapter", "title": "adapter"}],
        "seconds": 12.0, "created": "2026-12-03T12:00:00",
        "sections": {
            "task": {"section": "task", "notes": ["8 held-out rows"], "metrics": [
                {"section": "task", "name": "exact_match", "label": "exact match", "higher_is_better": True,
                 "values": {"base": 0.1, "adapter": 0.8}, "rows": 8, "help": ""},
                {"section": "task", "name": "loss", "label": "loss", "higher_is_better": False,
                 "values": {"base": 2.5, "adapter": 0.4}, "rows": 8, "help": ""}],
                "rows": [
                    {"section": "task", "row": 1, "prompt": "Who are you?", "reference": "I am Nova.",
                     "answers": {"base": "I am an AI.", "adapter": "I am Nova."},
                     "scores": {"base": {"exact_match": 0.0}, "adapter": {"exact_match": 1.0}}, "note": ""},
                    {"section": "task", "row": 2, "prompt": "Who made you?", "reference": "Acme Labs.",
                     "answers": {"base": "Acme Labs.", "adapter": "Nova."},
                     "scores": {"base": {"exact_match": 1.0}, "adapter": {"exact_match": 0.0}}, "note": ""}]},
            "forgetting": {"section": "forgetting", "metrics": [
                {"section": "forgetting", "name": "kl_per_token", "label": "KL per token", "higher_is_better": False,
                 "values": {"adapter": 0.05}, "rows": 20, "help": ""}], "rows": []},
            "judge": {"section": "judge", "error": "the judge endpoint http://127.0.0.1:9/v1 is unreachable"}}}
    reports.write_report(job_id, report)
    return report


def a_job() -> str:
    return jobs.create(JobConfig.from_dict({"training": {"max_steps": 4}})).id


def test_summary_names_better_worse_and_skipped_sections():
    report = saved_report(a_job())
    text = evaluate_tab.summary_markdown(report)
    assert "better** on exact match, loss" in text and "worse** on nothing" in text
    assert "LLM judge: the judge endpoint http://127.0.0.1:9/v1 is unreachable" in text
    assert "No report" in evaluate_tab.summary_markdown(None)


def test_metrics_table_and_chart_show_every_metric_per_variant():
    report = saved_report(a_job())
    table = evaluate_tab.metrics_table(report)
    assert table[0][:5] == ["held-out rows", "exact match", 0.1, 0.8, "better"]
    assert table[1][4] == "better" and table[2][4] == ""           # KL has no base value: no verdict
    assert evaluate_tab.metrics_headers(report) == ["section", "metric", "base", "adapter", "adapter vs base",
                                                    "direction"]
    figure = evaluate_tab.metrics_figure(report)
    assert [list(trace.x) for trace in figure.data] == [["base", "adapter"], ["base", "adapter"], ["adapter"]]


def test_rows_that_got_worse_come_first_and_the_csv_is_a_download():
    report = saved_report(a_job())
    rows = evaluate_tab.row_table(report)
    assert [r[1] for r in rows] == [2, 1] and rows[0][2] == -1.0 and rows[1][2] == 1.0
    path = evaluate_tab.write_rows_csv(report)
    assert export.is_download(path)
    with open(path, encoding="utf-8") as handle:
        written = list(csv.reader(handle))
    assert written[0] == evaluate_tab.ROW_COLUMNS and written[1][3] == "Who made you?"


def test_leaderboard_lists_jobs_with_reports_only():
    first, second, _ = a_job(), a_job(), a_job()
    saved_report(first)
    saved_report(second)
    headers, rows = evaluate_tab.leaderboard_table()
    assert {row[0] for row in rows} == {first, second}
    assert "task/exact_match" in headers and "forgetting/kl_per_token" in headers


def test_form_values_become_options_with_their_problems():
    options = evaluate_tab.options_from_form({"task": True, "forgetting": False, "formats": False,
                                              "benchmarks": ["studio_arith", "other"], "max_rows": 12.0,
                                              "judge_url": " ", "corpus_path": None})
    assert options.benchmarks == "studio_arith, other" and options.max_rows == 12 and options.judge_url == ""
    assert options.problems() == []
    nothing = evaluate_tab.options_from_form({"task": False, "forgetting": False, "formats": False})
    assert nothing.problems() == ["nothing to run: tick at least one section"]
    judge = reports.EvalOptions(judge_url="http://127.0.0.1:8000/v1", judge_key="secret")
    assert judge.problems()[0].startswith("judge_model") and "judge_key" not in judge.public()


def test_the_export_card_carries_the_report():
    report = saved_report(a_job())
    section = reports.card_section(report, "checkpoint-20 (job running)")
    assert section.startswith("## Quality report") and "exact match (held-out rows): base 0.1 → adapter 0.8 (better)" \
        in section and "this export is of the checkpoint-20" in section
    assert reports.card_section(None) == ""
