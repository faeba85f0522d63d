"""The GGUF benchmark runs on a tiny model folder in seconds and prints its table (no timing assertions)."""
import pytest

from bench import gguf as bench_gguf


@pytest.mark.slow
def test_gguf_benchmark_prints_its_table(tiny_model_dir, capsys):
    text = bench_gguf.main(["--model", str(tiny_model_dir), "--rounds", "1"])
    assert "| GGUF type" in text and "| F16" in text and "| Q8_0" in text and "increase / weights" in text
    assert "peak RSS increase MB" in capsys.readouterr().out
