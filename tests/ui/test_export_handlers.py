"""Export tab handlers, without a browser, on a tiny model trained for 2 steps: merged / adapter zips with the
merge check in the card, the re-download list, and one clear sentence for a deleted job, a path outside the
workspace, a second export while one runs, and a failed export (which offers nothing to download)."""
from __future__ import annotations

import zipfile

import pytest

from backend import export, jobs
from ui import export_tab as ex
from ui.common import readable
from tests.ui.test_playground_handlers import finished_job


@pytest.fixture
def job_id(tiny_model):
    return finished_job(tiny_model)


def test_kind_choices_offer_gguf_only_when_the_backend_has_it(monkeypatch):
    assert [value for _, value in ex.kind_choices()] == list(export.KINDS)
    monkeypatch.setattr(export, "GGUF_QTYPES", ("f16", "q8_0"), raising=False)
    assert "gguf" in [value for _, value in ex.kind_choices()]
    assert dict((value, label) for label, value in ex.kind_choices())["lora-gguf"].startswith("LoRA GGUF")


def test_quantisation_choices_offer_the_k_quants_only_where_llamacpp_is_built(monkeypatch):
    from backend.export import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: True)
    assert [value for _, value in ex.qtype_choices()] == ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"]
    assert ex.qtype_choices()[0][0].startswith("Q4_K_M")
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    assert [value for _, value in ex.qtype_choices()] == ["q8_0", "f16"]


def test_gguf_passes_the_quantisation(monkeypatch):
    seen = {}
    def fake(job_id, **kwargs):
        seen.clear()
        seen.update(kwargs, job_id=job_id)

    monkeypatch.setattr(export, "export_job", fake)
    monkeypatch.setattr(export, "GGUF_QTYPES", ("f16", "q8_0"), raising=False)
    ex.run_export("J", "gguf", "float16", "q8_0")
    assert seen["kind"] == "gguf" and seen["qtype"] == "q8_0" and "dtype" not in seen
    ex.run_export("J", "adapter", "float16")
    assert seen["kind"] == "adapter" and "dtype" not in seen and "qtype" not in seen
    ex.run_export("J", "merged", "bfloat16")
    assert seen["dtype"] == "bfloat16"


def test_merged_export_zip_card_and_listing(job_id, workspace):
    steps = []
    result = ex.run_export(job_id, "merged", "auto", progress=lambda fraction, text: steps.append((fraction, text)))
    assert result.zip_path.exists() and result.zip_path.parent == workspace / "exports" / job_id
    assert steps[-1][0] == 1.0 and any("zipping" in text for _, text in steps)
    with zipfile.ZipFile(result.zip_path) as archive:
        names = archive.namelist()
    assert any(n.endswith(".safetensors") for n in names) and any(n.endswith("README.md") for n in names)
    card = ex.result_markdown(result)
    assert f"Exported {job_id} (merged)" in card and "**merge check**: verified" in card and "⚠️" not in card
    assert "Who are you?" in card and ("KiB" in card or "MiB" in card)
    assert ex.download_file(str(result.zip_path)) == str(result.zip_path.resolve())
    files = ex.export_rows()
    assert [f.path for f in files] == [result.zip_path]
    assert result.zip_path.name in ex.exports_markdown(files)
    assert ex.export_choices(files)[0][1] == str(result.zip_path)


def test_adapter_export_and_dtype_choice(job_id):
    adapter = ex.run_export(job_id, "adapter")
    assert adapter.zip_path.name == f"{job_id}-adapter.zip" and adapter.check is None
    assert "merge check" not in ex.result_markdown(adapter)
    half = ex.run_export(job_id, "merged", "float16")
    assert half.zip_path.name == f"{job_id}-merged-float16.zip" and "float16" in ex.result_markdown(half)
    assert len(ex.export_rows(job_id)) == 2


def test_deleted_job_outside_path_and_no_selection_are_one_sentence(job_id, tmp_path):
    from workers import control
    control.delete_job(job_id)
    with pytest.raises(ValueError) as error:
        ex.run_export(job_id, "merged")
    assert f"no job '{job_id}'" in readable(error.value) and "deleted" in readable(error.value)
    outside = tmp_path / "secret.zip"
    outside.write_bytes(b"PK")
    with pytest.raises(ValueError) as error:
        ex.download_file(str(outside))
    assert "outside the workspace's exports folder" in readable(error.value)
    with pytest.raises(ValueError, match="outside"):
        ex.download_file("/etc/passwd")
    with pytest.raises(ValueError, match="Pick an export"):
        ex.download_file(None)
    with pytest.raises(ValueError, match="Pick a job first"):
        ex.run_export(None, "merged")


def test_second_export_while_one_runs_is_refused(job_id):
    with export.export_lock("another-job"):
        with pytest.raises(ValueError) as error:
            ex.run_export(job_id, "adapter")
    assert "an export is already running (job another-job" in readable(error.value)
    assert ex.export_rows() == []
    assert ex.run_export(job_id, "adapter").zip_path.exists()   # the lock is released afterwards


def test_failed_export_offers_nothing_to_download(job_id, workspace, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_write_card", boom)
    with pytest.raises(RuntimeError) as error:
        ex.run_export(job_id, "merged", "float32")
    assert readable(error.value) == "RuntimeError: disk full"
    assert ex.export_rows() == [] and ex.exports_markdown([]) == "_No exports yet._"
    leftovers = list((workspace / "exports" / job_id).iterdir())
    assert not any(p.suffix == ".zip" for p in leftovers), leftovers
    with pytest.raises(ValueError, match="not a finished export"):
        ex.download_file(str(workspace / "exports" / job_id / f"{job_id}-merged-float32.zip"))
    assert jobs.get(job_id).status == "completed"


@pytest.mark.slow
def test_gguf_export_card_shows_its_verification(job_id):
    if "gguf" not in export.KINDS:
        pytest.skip("this backend has no GGUF export")
    result = ex.run_export(job_id, "gguf", "auto", "f16")
    assert result.zip_path.name == f"{job_id}-f16-gguf.zip"
    card = ex.result_markdown(result)
    assert "**GGUF F16 check: passed** — " in card and "greedy answers identical" in card and "**merge check**" in card
    assert "⚠️" not in ex.gguf_lines({"qtype": "q8_0", "ok": True, "answers_match": [True], "max_logit_diff": None})[0]
    warned = ex.gguf_lines({"qtype": "q8_0", "ok": False, "answers_match": [True, False], "max_logit_diff": 0.5,
                            "tolerance": 0.1, "reason": "greedy answers differ on 1 of 2 prompts"})[0]
    assert warned == "⚠️ **GGUF Q8_0 check: not verified** — greedy answers differ on 1 of 2 prompts."


def test_q8_0_card_says_which_check_passed_in_its_own_paragraph():
    from pathlib import Path
    from types import SimpleNamespace

    check = export.MergeCheck("float32", ["Who are you?", "Hi"], 1e-5, [True, True], ["I am", "Hello"],
                              ["I am", "Hello"], 1e-3)
    result = SimpleNamespace(job_id="J", kind="gguf", zip_path=Path("/nonexistent/J-q8_0-gguf.zip"), seconds=3.0,
                             check=check, notes=[], gguf={"qtype": "q8_0", "ok": True, "disagreements": 0,
                                                          "answers_match": [True, True, False], "tie_margin": 1.0})
    card = ex.result_markdown(result)
    blocks = card.split("\n\n")
    gguf = next(b for b in blocks if "GGUF" in b)
    assert gguf.startswith("**GGUF Q8_0 check: passed** — teacher-forced next-token check")   # not in a bullet
    assert "2/3 identical, which the check allows" in gguf and "near-tie" in gguf and "verified" not in gguf
    assert any(b.startswith("- *Who are you?*") for b in blocks)                               # bullets apart


def test_progress_is_drawn_next_to_the_button_not_over_the_earlier_exports():
    from ui import app as ui_app

    blocks = ui_app.build_app()
    tab = blocks.studio.export
    (export_event,) = [fn for fn in blocks.fns.values() if any(t[0] == tab.export_btn._id for t in fn.targets)]
    assert export_event.show_progress_on == [tab.status]
    assert tab.listing in export_event.outputs                       # still refreshed, just not covered
    row = tab.export_btn.parent
    assert row is tab.status.parent and "ls-export-actions" in row.elem_classes
    assert row.children.index(tab.export_btn) < row.children.index(tab.status)
    assert ".ls-export-status" in ui_app.CSS
