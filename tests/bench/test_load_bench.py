"""The load benchmark runs on a tiny model and prints its table (no timing assertions)."""
import pytest

from bench import load


@pytest.mark.slow   # a real app, its worker and a training process
def test_load_benchmark_prints_its_table(tiny_model_dir):
    text = load.main(clients=3, window=3.0, jobs=3, model=str(tiny_model_dir))
    assert "| 3 pages" in text and "p95 ms" in text and "x idle" in text
    loaded = next(line for line in text.splitlines() if line.startswith("| 3 pages"))
    refreshes, errors = (int(cell) for cell in loaded.split("|")[3:5])
    assert refreshes >= 3 and errors == 0, loaded
