"""The overhead benchmark runs on a tiny model in seconds and prints its table (no timing assertions)."""
from bench import overhead


def test_overhead_benchmark_prints_its_table(tiny_model_dir, capsys):
    text = overhead.main(steps=2, rounds=1, model=str(tiny_model_dir), batch=2)
    assert "LoRA Studio (sft stage)" in text and "plain TRL script" in text and "ratio studio / plain" in text
    assert "tokens/s" in capsys.readouterr().out
