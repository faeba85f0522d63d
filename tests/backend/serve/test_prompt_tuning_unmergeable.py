"""A prompt tuning job (mergeable=False) everywhere a merge would happen: the playground's merged column answers
with one sentence and the merge check is skipped with it, the export offers and writes the adapter only and
refuses the merged / GGUF kinds in one sentence, and the API server refuses it in one sentence."""
from __future__ import annotations

import pytest

from backend import export
from backend.models import methods
from backend.serve import playground
from backend.serve.chat import GenerationSettings
from tests.backend.conftest import finished_job

QUESTION = [{"role": "user", "content": "Who are you?"}]
REASON = "not mergeable: prompt tuning adds virtual tokens, it does not change weights"


@pytest.fixture
def prompt_job(tiny_model) -> str:
    return finished_job(tiny_model, method="prompt_tuning")


def test_the_method_row_is_not_mergeable():
    spec = methods.spec("prompt_tuning")
    assert not spec.mergeable and spec.not_mergeable_reason == REASON and spec.peft_type == "PROMPT_TUNING"


def test_playground_merged_column_says_why_and_the_merge_check_is_skipped(prompt_job):
    playground.close_session()
    try:
        session = playground.open_session(prompt_job)
        assert session.check is None and session.check_skipped == f"merge check skipped: {REASON}"
        answers = session.answer_all(QUESTION, GenerationSettings(max_new_tokens=6))
        assert answers["merged"].text == REASON and answers["merged"].done
        assert answers["adapter"].tokens == 6 and answers["adapter"].text != REASON
    finally:
        playground.close_session()


def test_export_gives_the_adapter_only(prompt_job):
    assert export.offered_kinds(prompt_job) == (("adapter",), f"adapter only: {REASON}")
    for kind in ("merged", "gguf", "lora-gguf"):
        with pytest.raises(export.ExportError) as refused:
            export.export_job(prompt_job, kind=kind)
        assert str(refused.value) == (f"job {prompt_job} cannot be exported as {kind} ({REASON}); "
                                      "export the adapter instead")
    result = export.export_job(prompt_job, kind="adapter")
    assert (result.folder / "adapter_config.json").is_file() and result.zip_path.is_file()


def test_the_api_server_refuses_it_in_one_sentence(prompt_job, tiny_model):
    from backend.serve.engine import Engine, ServeError

    engine = Engine(tiny_model)
    try:
        with pytest.raises(ServeError) as refused:
            engine.resolve(prompt_job)
        assert "prompt tuning job" in str(refused.value) and str(refused.value).count(".") <= 1
    finally:
        engine.close()
