"""Small histograms count whole rows: no 0.5 ticks, and "1 row" not "1 rows"."""
from backend.data.stats import label_balance_figure, token_length_figure


def test_small_counts_have_whole_number_ticks_and_singular_rows():
    fig = token_length_figure([10, 12, 40], max_length=30)
    assert fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.tickformat == ",d"
    assert "(1 row cut)" in fig.layout.annotations[0].text
    assert "(2 rows cut)" in token_length_figure([40, 41, 5], max_length=30).layout.annotations[0].text
    assert label_balance_figure({"desirable": 1, "undesirable": 1}).layout.yaxis.dtick == 1
    many = token_length_figure(list(range(0, 2000, 2)) * 3)
    assert many.layout.yaxis.dtick is None and many.layout.yaxis.tickformat == ",d"
