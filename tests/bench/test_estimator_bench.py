"""The estimator and methods benchmarks run on a tiny model and print their tables (no timing assertions)."""
import pytest

from bench import estimator, methods


@pytest.mark.slow
def test_estimator_benchmark_prints_its_table(tiny_model_dir, capsys):
    text = estimator.main(lengths=(64,), batch=2, steps=2, model=str(tiny_model_dir), methods=("lora",))
    assert "| lora" in text and "estimate MiB" in text and "measured MiB" in text and "error" in text
    assert "Largest error" in capsys.readouterr().out


@pytest.mark.slow
def test_methods_benchmark_prints_ratios_to_lora(tiny_model_dir, capsys):
    text = methods.main(length=64, batch=2, steps=2, rounds=1, model=str(tiny_model_dir), methods=("lora", "dora"))
    assert "| dora" in text and "step time / lora" in text and "weights / lora" in text
    assert "tokens/s" in capsys.readouterr().out


def test_saved_measurements_are_compared_without_measuring_again(tiny_model_dir, tmp_path):
    import json
    saved = tmp_path / "runs.jsonl"
    saved.write_text(json.dumps({"method": "qlora", "max_length": 64, "batch": 2, "batching": "pad",
                                 "measured_mib": 100.0}) + "\n")
    text = estimator.main(model=str(tiny_model_dir), measurements=str(saved))
    assert "| qlora  | 64" in text and "runs.jsonl" in text
