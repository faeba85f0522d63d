"""Adapters tab handlers without a browser: the filtered registry, the provenance card, composing from the
tab's inputs, the skills view and the two-step delete that names what came from an adapter."""
from __future__ import annotations

import pytest

from backend import adapters
from tests.backend.conftest import finished_job
from ui import adapters_tab
from ui.common import UserError


def test_list_compose_check_and_delete_from_the_tab(tiny_model):
    a, b = finished_job(tiny_model, seed=1), finished_job(tiny_model, seed=2)
    table, choices = adapters_tab.listing()
    assert a in table and b in table and {a, b} == {value for _, value in choices}
    assert adapters_tab.filter_choices()["origin"] == ["all", "trained"]
    assert "lineage:" in adapters_tab.card(a) and "identity-demo" in adapters_tab.card(a)

    with pytest.raises(UserError, match="not a list of numbers"):
        adapters_tab.run_compose([a, b], "half, half", "linear", None, "")
    with pytest.raises(adapters.RegistryError, match="at least two adapters"):
        adapters_tab.run_compose([a], "", "linear", None, "")
    entry = adapters_tab.run_compose([a, b], "0.6, 0.4", "ties", 0.5, "both")
    assert entry.combination == {"type": "ties", "density": 0.5, "seed": None}
    assert [p["weight"] for p in entry.parents] == [0.6, 0.4]
    table, _ = adapters_tab.listing(origin="composed")
    assert entry.id in table and a not in table
    assert "Not checked yet" in adapters_tab.skills_view(entry.id)[0]
    assert "not a composition" in adapters_tab.skills_view(a)[0]

    message, asked = adapters_tab.delete_request(a)
    assert asked == a and f"{entry.id} (composed of it)" in message and "cannot be undone" in message
    with pytest.raises(UserError, match="press Delete first"):
        adapters_tab.delete_confirmed(a, b)
    assert adapters_tab.delete_confirmed(a, asked) == f"Adapter {a} deleted."
    assert a not in adapters_tab.listing()[0]
