"""The playground / export benchmark runs on a tiny model in seconds and prints its tables (no timing asserts)."""
import pytest

from bench import playground


@pytest.mark.slow
def test_playground_benchmark_prints_its_tables(tiny_model_dir, capsys):
    text = playground.main(quick=True, model=str(tiny_model_dir), steps=2, new_tokens=4, rounds=1)
    for expected in ("adapter (unmerged)", "merged", "ratio studio / bare", "peak / weights"):
        assert expected in text
    assert "tokens/s" in capsys.readouterr().out
