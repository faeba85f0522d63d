"""The llama.cpp GGUF benchmark runs on a tiny model folder and prints both tables (no timing assertions)."""
import pytest

from backend.export import llamacpp
from bench import llamacpp as bench_llamacpp


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
def test_llamacpp_benchmark_prints_the_types_asked_for_and_the_speeds(tiny_model_dir):
    text = bench_llamacpp.main(["--model", str(tiny_model_dir), "--prompts", "2", "--new-tokens", "8",
                                "--types", "q4_k_m"])
    for qtype in ("| F16", "| Q4_K_M"):
        assert qtype in text, text
    assert "| Q8_0" not in text
    assert "top-1 agreement" in text and "| llama.cpp Q4_K_M" in text and "vs transformers" in text
    assert "failed:" not in text, text
