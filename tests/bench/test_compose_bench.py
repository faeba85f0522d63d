"""The compose benchmark (the two-fact demo) runs on the tiny model and prints its tables (nothing about what
the composition answers is asserted: the bench reports it)."""
import pytest

from bench import compose


@pytest.mark.slow   # trains two jobs, composes, generates and scores
def test_compose_benchmark_prints_its_tables(tiny_model_dir):
    text = compose.main(model=str(tiny_model_dir))
    for line in ("| base", "| parent: name", "| parent: colour", "| composed: cat", "| name (identity-demo)",
                 "| colour (colour-demo)"):
        assert line in text, line
    assert "answered both questions" in text
