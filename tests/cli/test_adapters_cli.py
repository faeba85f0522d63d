"""`lorastudio adapters ...` in-process: list / show with provenance, compose, note, and a delete that says first
what came from the adapter."""
from __future__ import annotations

import json

from cli import main as cli_main
from tests.backend.conftest import finished_job


def test_list_show_compose_note_and_a_guarded_delete(tiny_model, capsys):
    a, b = finished_job(tiny_model, seed=1), finished_job(tiny_model, seed=2)
    assert cli_main(["adapters", "compose", a, b, "--type", "ties", "--density", "0.5", "--weights", "0.6", "0.4",
                     "--name", "both"]) == 0
    composed = capsys.readouterr().out.strip().splitlines()[-1].split()[1].rstrip(":")
    assert cli_main(["adapters", "list", "--json"]) == 0
    listed = {e["id"]: e for e in json.loads(capsys.readouterr().out)["adapters"]}
    assert set(listed) == {a, b, composed} and listed[composed]["origin"] == "composed"
    assert listed[a]["dataset"]["id"] == "identity-demo" and listed[a]["hyperparameters"]["lora"]["r"] == 4

    assert cli_main(["adapters", "show", composed]) == 0
    shown = capsys.readouterr().out
    assert f"composed:    ties, density 0.5 of {a} × 0.6, {b} × 0.4" in shown and "lineage:" in shown
    assert cli_main(["adapters", "note", a, "--note", "the first", "--tags", "nova,v1"]) == 0
    capsys.readouterr()
    assert cli_main(["adapters", "list", "--tag", "nova"]) == 0
    assert a in capsys.readouterr().out
    assert cli_main(["adapters", "list", "--origin", "composed"]) == 0
    out = capsys.readouterr().out
    assert composed in out and a not in out

    assert cli_main(["adapters", "delete", a]) == 1
    assert f"{composed} (composed of it)" in capsys.readouterr().err
    assert cli_main(["adapters", "delete", a, "--force"]) == 0
    assert cli_main(["adapters", "show", a]) != 0
    assert "no adapter" in capsys.readouterr().err
