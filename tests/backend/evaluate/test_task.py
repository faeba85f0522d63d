"""The held-out rows section: the text metrics against values worked out by hand, the section's plumbing on the
tiny model (SFT, DPO and KTO jobs). The acceptance test on the bundled model's quickstart job is
tests/cli/test_eval.py."""
from __future__ import annotations

import math

import pytest

from backend.evaluate import heldout, task
from backend.evaluate import metrics as m
from backend.evaluate.common import Progress
from backend.evaluate.context import load_context
from backend.evaluate.generate import score
from backend.serve.chat import GenerationSettings

TASK_METRICS = ["token_f1", "exact_match", "rouge_l", "chrf", "loss", "perplexity", "answer_tokens", "cut_off"]


def stage_job(model: str, stage: str, dataset: str, eval_fraction: float = 0.2) -> str:
    """A 2-step job of any stage on the tiny model, recorded as the worker would."""
    from backend import jobs
    from backend.config import JobConfig
    from backend.jobs import runner

    config = JobConfig.from_dict({
        "model": model, "dataset": dataset, "stage": stage, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 2e-2, "max_length": 128,
                     "eval_fraction": eval_fraction, "save_steps": 50, "logging_steps": 1}})
    job = jobs.create(config, status="running")
    finished = runner.run_job(job.id)
    assert finished.status == "completed", finished.reason
    return job.id


# ------------------------------------------------------------------ the metrics, on strings

def test_exact_match_normalises_whitespace_and_case_but_not_punctuation():
    assert m.exact_match("  Paris  is\n NICE ", "paris is nice") == 1.0
    assert m.exact_match("Paris.", "Paris") == 0.0
    assert m.normalise(" A\t b ") == "a b"


def test_token_f1_is_squad_style():
    # "The cat sat." -> [cat, sat]; "a cat sat on the mat" -> [cat, sat, on, mat]: P = 1, R = 1/2, F1 = 2/3
    assert m.token_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    assert m.token_f1("Paris!", "paris") == 1.0 and m.token_f1("London", "Paris") == 0.0
    assert m.token_f1("", "") == 1.0 and m.token_f1("the", "Paris") == 0.0     # articles alone are empty


def test_rouge_l_and_chrf_against_values_worked_out_by_hand():
    # LCS of "the cat is on the mat" and "the cat sat on the mat" is 5 words of 6 on both sides
    assert m.rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert m.rouge_l("Über 世界", "über 世界") == 1.0        # other scripts count (rouge-score's own drops them)
    # chrF "ab" vs "abc": 1-grams P 1, R 2/3; 2-grams P 1, R 1/2; longer orders absent -> P 1, R 7/12,
    # F(beta 2) = 5 * 7/12 / (4 + 7/12) = 35/55
    assert m.chrf("ab", "abc") == pytest.approx(100 * 35 / 55)
    assert m.chrf("same text", "same text") == pytest.approx(100.0) and m.chrf("xyz", "abc") == 0.0
    assert m.corpus_chrf(["ab"], ["abc"]) == pytest.approx(100 * 35 / 55) and m.corpus_chrf([], []) is None


# ------------------------------------------------------------------ the section on the tiny model

def test_sft_section_scores_every_variant_from_its_own_answers(lora_job):
    ctx = load_context(lora_job, settings=GenerationSettings(max_new_tokens=6), batch_size=4)
    seen = []
    progress = Progress(lambda fraction, text: seen.append(text))
    progress.advance(1)                                     # the report's own first unit (model loaded)
    result = task.run(ctx, progress)
    rows = heldout.load_rows(ctx)
    assert result.section == "task" and len(result.rows) == len(rows) > 0
    assert [metric.name for metric in result.metrics] == TASK_METRICS
    for metric in result.metrics:
        assert set(metric.values) == {"base", "adapter"} and metric.rows == len(rows) and metric.help
        assert all(isinstance(v, float) and math.isfinite(v) for v in metric.values.values()), metric
    values = {metric.name: metric.values for metric in result.metrics}
    assert values["loss"]["base"] != pytest.approx(values["loss"]["adapter"], abs=1e-4)
    assert values["perplexity"]["adapter"] == pytest.approx(math.exp(values["loss"]["adapter"]))
    for key in ("base", "adapter"):
        exact = [m.exact_match(r.answers[key], r.reference) for r in result.rows]
        assert [r.scores[key]["exact_match"] for r in result.rows] == exact
        assert values["exact_match"][key] == pytest.approx(sum(exact) / len(exact))
        assert all(0 <= r.scores[key]["answer_tokens"] <= 6 for r in result.rows)
    assert [r.prompt for r in result.rows] == [row.prompt_text for row in rows]
    assert progress.done == progress.total and any("adapter: generating answers" in t for t in seen)


@pytest.mark.slow
def test_dpo_section_adds_how_often_chosen_beats_rejected(tiny_model):
    job = stage_job(tiny_model, "dpo", "concise-pairs")
    ctx = load_context(job, settings=GenerationSettings(max_new_tokens=4), max_rows=4, batch_size=4)
    result = task.run(ctx)
    preference = {metric.name: metric for metric in result.metrics if metric.section == "preference"}
    assert set(preference) == {"chosen_preferred", "logprob_margin"}
    assert preference["chosen_preferred"].rows == 4 and preference["chosen_preferred"].higher_is_better
    rows = heldout.load_rows(ctx)
    adapter = ctx.variant("adapter")
    chosen = score(ctx, adapter, [r.messages for r in rows], [r.chosen for r in rows])
    rejected = score(ctx, adapter, [r.messages for r in rows], [r.rejected for r in rows])
    margins = [sum(c.logprobs) - sum(r.logprobs) for c, r in zip(chosen, rejected)]
    assert [row.scores["adapter"]["logprob_margin"] for row in result.rows] == pytest.approx(margins, abs=1e-3)
    assert preference["chosen_preferred"].values["adapter"] == sum(x > 0 for x in margins) / 4
    assert preference["logprob_margin"].values["base"] != pytest.approx(preference["logprob_margin"].values["adapter"])
    assert all(row.note.startswith("rejected: ") for row in result.rows)


def test_kto_section_compares_only_thumbs_up_rows_with_the_answers(tiny_model):
    job = stage_job(tiny_model, "kto", "concise-kto")
    ctx = load_context(job, settings=GenerationSettings(max_new_tokens=4), max_rows=12, batch_size=6)
    result = task.run(ctx)
    rows = heldout.load_rows(ctx)
    good = [r for r in rows if r.label]
    assert 0 < len(good) < len(rows)                        # both labels among the held-out rows
    metrics = {metric.name: metric for metric in result.metrics}
    assert metrics["token_f1"].rows == len(good) and metrics["answer_tokens"].rows == len(rows)
    ranked = metrics["desirable_ranked_higher"]
    assert ranked.section == "preference" and all(0 <= v <= 1 for v in ranked.values.values())
    assert all(math.isfinite(v) for v in metrics["desirable_margin"].values.values())
    bad_rows = [r for r, row in zip(result.rows, rows) if not row.label]
    assert all(r.reference == "" and "token_f1" not in r.scores["base"] and r.note.startswith("thumbs-down")
               for r in bad_rows)
    assert any("thumbs-up completions only" in note for note in result.notes)
    from backend.serve import playground                    # the Playground's eval split keeps the label in view
    shown = playground.eval_prompts(job, limit=len(rows))
    assert len(shown) == heldout.load(ctx).held_out == 12
    assert all(p.reference.startswith(("[desirable] ", "[undesirable] ")) for p in shown)
