"""The quality report benchmark runs on a tiny model in seconds and prints its tables (no timing asserts)."""
from bench import evaluate


def test_evaluate_benchmark_prints_its_tables(tiny_model_dir, capsys):
    text = evaluate.main(model=str(tiny_model_dir), rows=6, max_new_tokens=4, batch_sizes=(1, 4), steps=2,
                         report_rows=3)
    for expected in ("speed-up vs batch 1", "6 held-out rows of 6", "task section (generate + score + metrics)",
                     "Target: batch 8", "Whole report", "| task", "| forgetting", "| benchmarks"):
        assert expected in text
    assert "| adapter | 4 " in text and "rows/s" in capsys.readouterr().out
