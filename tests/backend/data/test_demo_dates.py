"""`dates-demo`: a demo dataset whose every answer is checkable by exact match (bench/claims.py measures on it)."""
from __future__ import annotations

from datetime import date

from backend.data import validate
from backend.data.demo import DEMO_DATASETS
from backend.data.demo_dates import date_rows, exact, heldout_pairs, in_words


def test_rows_validate_and_each_answer_is_the_one_correct_form():
    rows = date_rows()
    assert DEMO_DATASETS["dates-demo"] is date_rows and len(rows) == 400 and rows == date_rows()   # seeded
    report = validate("dates-demo", stage="sft")
    assert report.ok and not report.errors, report.to_dict()
    for row in rows:
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        iso = next(word.rstrip(".?") for word in question.split() if word[:4].isdigit())
        assert answer == in_words(date.fromisoformat(iso))
    assert in_words(date(2024, 3, 5)) == "5 March 2024"


def test_heldout_dates_are_never_trained_on_and_the_check_is_exact():
    trained_answers = {row["messages"][1]["content"] for row in date_rows()}
    pairs = heldout_pairs()
    assert len(pairs) == 40 and len({a for _, a in pairs}) == 40
    assert len(trained_answers) == 400 and not trained_answers & {a for _, a in pairs}
    question, answer = pairs[0]
    assert exact(f" {answer}.", answer) and not exact(f"The date is {answer}", answer)
    iso = next(word.rstrip(".?") for word in question.split() if word[:4].isdigit())
    assert not exact(iso, answer) and not exact(date.fromisoformat(iso).strftime("%B %d, %Y"), answer)


def test_rows_are_short_after_the_chat_template(smol_tokenizer):
    lengths = [len(smol_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
               for row in date_rows()[:50]]
    assert max(lengths) <= 64, max(lengths)
