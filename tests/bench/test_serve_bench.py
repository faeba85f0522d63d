"""The serving benchmark runs its tiny mode on the tiny model and prints its tables (no timing assertions): every
measure's row, every arm's row, and the API's answers equal to the playground's."""
import pytest

from bench import serve


@pytest.mark.slow
def test_serve_benchmark_prints_every_measure_and_answers_match(tiny_model_dir, capsys):
    text = serve.main(quick=True, model=str(tiny_model_dir))
    for row in ("8 different adapters vs 8 to the base", "batched vs one at a time", "break-even",
                "adapter swap", "playground's adapter column",
                serve.MIXED_ARM, serve.BASE_ARM, serve.SERIAL_ARM, serve.ONE_ARM, serve.MERGED_ARM):
        assert row in text, text
    answers = next(line for line in text.splitlines() if "playground's adapter column" in line)
    assert "identical text" in answers and answers.rstrip(" |").endswith("met"), answers
    assert "alone: 8/8" in answers
    assert "| 1 of 8 " in text and "8 of 1" in text      # concurrent: one batch of 8; one at a time: 8 of 1
    assert "Verdict:" in capsys.readouterr().out
