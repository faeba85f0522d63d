"""The datasets benchmark runs end to end on a tiny size (the real run is `python -m bench.data`)."""
from __future__ import annotations

from bench import data as bench_data


def test_bench_runs_on_a_tiny_size(smol_tokenizer, monkeypatch):
    monkeypatch.setattr(bench_data, "_load_tokenizer", lambda model: smol_tokenizer)  # reuse the session's
    results = bench_data.main(rows=300, tokenize_rows=100)
    assert results["validate_rows_per_s"] > 0 and results["tokenize_rows_per_s"] > 0
    assert results["ratio_vs_trl"] > 0
    assert results["validate_rejected_peak_mb"] < results["validate_peak_mb"]
    table = bench_data.markdown(results)
    assert table.startswith("| measurement | value |") and "rows/s" in table


def test_synthetic_rows_are_valid_multi_turn_chats():
    rows = list(bench_data.synthetic_rows(50))
    assert len(rows) == 50 and max(len(r["messages"]) for r in rows) > 4
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
