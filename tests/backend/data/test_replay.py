"""The replay set: the bundled model's own greedy answers, saved once as a dataset, distilled again only when the
base or the settings change; a mix that names `replay` trains on it."""
from __future__ import annotations

from backend import data
from backend.data.replay import dataset_name, ensure_replay, last_full_sentence
from backend.data.replay_prompts import REPLAY_PROMPTS

MODEL = "smollm2-135m-instruct"
PROMPTS = tuple(p for p in REPLAY_PROMPTS if len(p) < 40)[:16]     # short questions: short answers, a quick test


def test_replay_is_the_base_models_own_answers_distilled_once(bundled_model_dir, workspace):
    from backend import models
    from backend.serve.chat import answer

    seen = []
    dataset_id = ensure_replay(MODEL, prompts=PROMPTS, max_new_tokens=96,
                               progress=lambda done, total, text: seen.append((done, total)))
    meta = data.dataset_info(dataset_id)
    made = meta["replay"]
    assert meta["name"] == dataset_name(MODEL) == "replay-smollm2-135m-instruct"
    assert made["model"] == MODEL and len(made["weights_sha256"]) == 64 and made["prompts"] == len(PROMPTS)
    assert seen[-1] == (len(PROMPTS), len(PROMPTS))

    rows = data.load_for_stage(dataset_id, "sft").rows
    assert len(rows) == made["rows"] and len(rows) + made["left_out"] == len(PROMPTS) and len(rows) >= 10
    asked = [row["messages"][0]["content"] for row in rows]
    assert set(asked) <= set(PROMPTS)
    # each answer is what the base says to that prompt alone, greedy (a batch of eight changes nothing), or its
    # beginning up to the last full sentence when the token limit cut it
    tokenizer, model = models.load_tokenizer(MODEL), models.load_model(MODEL)
    for row in rows[:3]:
        alone = answer(model, tokenizer, row["messages"][:1], 96).strip()
        kept = row["messages"][1]["content"]
        assert alone == kept or (alone.startswith(kept) and len(kept) < len(alone))
    assert made["trimmed_answers"] > 0          # most of this model's answers run past 96 tokens

    assert ensure_replay(MODEL, prompts=PROMPTS, max_new_tokens=96) == dataset_id       # kept, not distilled again
    assert data.dataset_info(dataset_id)["created_at"] == meta["created_at"]
    assert [m["name"] for m in data.list_datasets()].count(dataset_name(MODEL)) == 1


def test_the_prompts_are_many_and_distinct():
    assert len(set(REPLAY_PROMPTS)) == len(REPLAY_PROMPTS) >= 90
    assert all(p.strip() == p and p[-1] in ".?!:" for p in REPLAY_PROMPTS)


def test_a_cut_answer_keeps_its_last_full_sentence():
    assert last_full_sentence("Tokyo is the capital. It has 14 million peo") == "Tokyo is the capital."
    assert last_full_sentence("Steps:\n1. Boil water\n2. Add the te") == "Steps:\n1. Boil water"
    assert last_full_sentence("3.14 is pi and e is 2.7") == ""          # decimals are no sentence end
