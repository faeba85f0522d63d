"""Dataset statistics for the Data tab: the token-length histogram (with the max_length line) and KTO labels.

The numbers themselves (rows, turns per row, token-length summary, label balance) are in ValidationReport;
this module draws them with plotly (no gradio here: the UI only displays the figures).
"""
from __future__ import annotations

DEFAULT_BINS = 40


def token_length_figure(lengths, max_length: int | None = None, title: str = "Tokens per row (after chat template)",
                        bins: int = DEFAULT_BINS):
    """A plotly histogram of token lengths with a vertical line at max_length (rows right of it are cut).

    `lengths` is a list of ints or a ValidationReport (its measured lengths and max_length are used).
    """
    import plotly.graph_objects as go

    if hasattr(lengths, "length_values"):
        max_length = max_length if max_length is not None else lengths.max_length
        lengths = lengths.length_values
    lengths = list(lengths or [])
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=lengths, nbinsx=bins, name="rows", marker_color="#4c78a8"))
    if max_length:
        over = sum(1 for n in lengths if n > max_length)
        fig.add_vline(x=max_length, line_dash="dash", line_color="#e45756",
                      annotation_text=f"max_length {max_length} ({_rows(over)} cut)",
                      annotation_position="top right")
    fig.update_layout(title=title, xaxis_title="tokens", yaxis_title="rows", bargap=0.05, showlegend=False,
                      margin={"l": 40, "r": 20, "t": 50, "b": 40}, yaxis=_count_axis(_largest_bin(lengths, bins)))
    fig.update_traces(hovertemplate="%{x} tokens: %{y} row(s)<extra></extra>")
    return fig


def label_balance_figure(balance: dict | None):
    """A bar chart of KTO labels ({"desirable": n, "undesirable": m}), or an empty figure."""
    import plotly.graph_objects as go

    balance = balance or {}
    fig = go.Figure(go.Bar(x=list(balance), y=list(balance.values()), marker_color=["#54a24b", "#e45756"]))
    fig.update_layout(title="KTO labels", yaxis_title="rows", margin={"l": 40, "r": 20, "t": 50, "b": 40},
                      yaxis=_count_axis(max(balance.values(), default=0)))
    return fig


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _largest_bin(lengths: list, bins: int) -> int:
    """About the tallest bar plotly draws (its bins differ a little; only the axis ticks depend on it)."""
    if not lengths:
        return 0
    low, high = min(lengths), max(lengths)
    width = max((high - low) / max(bins, 1), 1e-9)
    counts: dict[int, int] = {}
    for value in lengths:
        slot = min(int((value - low) / width), bins - 1)
        counts[slot] = counts.get(slot, 0) + 1
    return max(counts.values())


def _count_axis(largest: int) -> dict:
    """A y axis of row counts: whole numbers only (small counts get a tick per row or two, never 0.5)."""
    axis = {"tickformat": ",d", "rangemode": "tozero"}
    if largest <= 12:
        axis.update(tick0=0, dtick=1 if largest <= 6 else 2)
    return axis
