"""The padding benchmark runs on a tiny model in seconds and prints its table (no timing assertions)."""
import pytest

from bench import padding


@pytest.mark.slow
def test_padding_benchmark_prints_its_table(tiny_model_dir, capsys):
    text = padding.main(synthetic=4, rounds=1, batch=2, max_length=128, model=str(tiny_model_dir),
                        efficiency_rows=50)
    for row in ("pad", "group_by_length", "padding_free", "padding efficiency", "ratio to pad", "keeps rows apart"):
        assert row in text
    assert "effective tokens/s" in capsys.readouterr().out


def test_grouping_by_length_pads_less_than_random_batches():
    lengths = [10 + (i * 37) % 400 for i in range(400)]
    plain = padding.padding_efficiency(lengths, 4, "pad")
    grouped = padding.padding_efficiency(lengths, 4, "group_by_length")
    assert 0 < plain < grouped <= 1.0 and padding.padding_efficiency(lengths, 4, "padding_free") == 1.0


def test_the_chat_mix_has_a_long_tail():
    rows = padding.chat_mix(200)
    words = sorted(sum(len(m["content"].split()) for m in row["messages"]) for row in rows)
    assert words[-1] > 8 * words[len(words) // 2]
