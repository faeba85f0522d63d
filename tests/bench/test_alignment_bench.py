"""The alignment benchmark runs on a tiny model in seconds and prints its table (no timing assertions)."""
import pytest

from bench import alignment


@pytest.mark.slow
def test_alignment_benchmark_prints_its_table(tiny_model_dir, capsys):
    text = alignment.main(steps=3, rounds=1, model=str(tiny_model_dir), batch=2)
    for row in ("ratio DPO / SFT", "weights held, DPO", "reference = adapter disabled", "reference = second base copy",
                "memory saved by the adapter-disabled reference"):
        assert row in text
    assert "target <= 1.6" in capsys.readouterr().out
