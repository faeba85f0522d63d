"""The load benchmark runs on a tiny model and prints its table (no timing assertions)."""
import pytest

from bench import load


@pytest.mark.slow   # a real app, its worker and a training process
def test_load_benchmark_prints_its_table(tiny_model_dir):
    text = load.main(clients=3, window=3.0, jobs=3, model=str(tiny_model_dir))
    assert "| 3 pages" in text and "p95 ms" in text and "x idle" in text
    lines = text.splitlines()
    header = [cell.strip() for cell in next(line for line in lines if line.startswith("| window")).split("|")]
    loaded = [cell.strip() for cell in next(line for line in lines if line.startswith("| 3 pages")).split("|")]
    row = dict(zip(header, loaded))
    assert int(row["refreshes"]) >= 3 and int(row["errors"]) == 0, row
    assert float(row["page interval s"]) == 2.0, "3 pages are within the refresh budget: every 2 s"
