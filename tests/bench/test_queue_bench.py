"""The queue benchmark runs on a tiny model and prints its table (no timing assertions)."""
import pytest

from bench import queue


@pytest.mark.slow
def test_queue_benchmark_prints_its_table(tiny_model_dir, capsys):
    text = queue.main(rounds=1, model=str(tiny_model_dir), steps=2)
    assert "added by the queue (s)" in text and "callbacks / step (%)" in text
    assert "submit -> first step" in capsys.readouterr().out
