"""Token lengths after the chat template, truncation counts, the preview and the histogram (real tokenizer)."""
from __future__ import annotations

import statistics

import pytest

from backend.data import DataError, load_for_stage, validate
from backend.data.preview import preview, preview_html
from backend.data.render import tokenize_conversation
from backend.data.stats import label_balance_figure, token_length_figure


def chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_lengths_truncation_and_lost_answers(write_jsonl, tokenizer):
    rows = [chat(f"question {i}", f"answer {i}") for i in range(12)]
    rows.append(chat("short", "word " * 200))          # row 13: answer cut
    rows.append(chat("word " * 200, "lost answer"))    # row 14: prompt fills max_length
    path = write_jsonl(rows)
    report = validate(path, stage="sft", tokenizer=tokenizer, max_length=64)
    expected = sorted(tokenize_conversation(tokenizer, r["messages"])["length"] for r in rows)
    assert report.token_lengths == {"stage": "sft", "min": expected[0], "median": int(statistics.median(expected)),
                                    "p95": expected[-2], "max": expected[-1]}
    assert report.length_values == expected
    assert report.over_max_length == {"max_length": 64, "rows": 2, "answer_lost": 1}
    cut, lost = sorted(report.warnings, key=lambda w: w.message)
    assert cut.row == 13 and "max_length=64" in cut.message and "end of the answer is cut off" in cut.message
    assert lost.row == 14 and "the trainer skips the row" in lost.message
    assert report.ok          # 12 rows still train
    ok = validate(path, stage="sft", tokenizer=tokenizer, max_length=1024)
    assert ok.ok and ok.over_max_length["rows"] == 0 and not ok.warnings
    tiny = validate(path, stage="sft", tokenizer=tokenizer, max_length=8)
    assert not tiny.ok and "only 0 rows keep part of their answer" in tiny.errors[0].message


def test_preference_lengths(write_jsonl, tokenizer):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": "bad " * (50 if i == 0 else 1)}
            for i in range(12)]
    report = validate(write_jsonl(rows), stage="dpo", tokenizer=tokenizer, max_length=40)
    assert report.over_max_length == {"max_length": 40, "rows": 1, "answer_lost": 0}
    assert report.warnings[0].row == 1 and report.ok


def test_preview_marks_trained_spans_exactly(write_jsonl, tokenizer):
    rows = [{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"hi {i}"},
                          {"role": "assistant", "content": f"hello {i}"}, {"role": "user", "content": "more"},
                          {"role": "assistant", "content": "sure"}]} for i in range(12)]
    path = write_jsonl(rows)
    entries = preview(str(path), tokenizer, "sft", n=2, max_length=512)
    assert [e["row"] for e in entries] == [1, 2]
    trained = [s["text"] for s in entries[0]["segments"] if s["trained"]]
    assert trained == ["hello 0<|im_end|>\n", "sure<|im_end|>\n"]
    text = "".join(s["text"] for s in entries[0]["segments"])
    assert text == tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False)
    tokens = tokenize_conversation(tokenizer, rows[0]["messages"], 512)
    assert entries[0]["tokens"] == tokens["length"] and entries[0]["trained_tokens"] == sum(tokens["assistant_masks"])
    html = preview_html(entries)
    assert "<mark" in html and "hello 0" in html and "&lt;|im_start|&gt;" in html
    short = preview(str(path), tokenizer, "sft", n=1, max_length=10)[0]
    assert short["truncated"] and any(s["cut"] for s in short["segments"])


def test_preview_of_pairs_shows_chosen_and_rejected(write_jsonl, tokenizer):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)]
    entries = preview(str(write_jsonl(rows)), tokenizer, "dpo", n=1)
    assert [e["answer"] for e in entries] == ["chosen", "rejected"]
    assert [s["text"] for s in entries[0]["segments"] if s["trained"]] == ["good 0<|im_end|>\n"]
    with pytest.raises(DataError, match="labelled"):
        preview("identity-demo", tokenizer, "kto")


def test_histogram_has_the_max_length_line(write_jsonl, tokenizer):
    rows = [chat(f"q{i}", "word " * i) for i in range(20)]
    report = validate(write_jsonl(rows), stage="sft", tokenizer=tokenizer, max_length=30)
    fig = token_length_figure(report)
    assert list(fig.data[0].x) == report.length_values
    (line,) = [s for s in fig.layout.shapes if s.type == "line"]
    assert line.x0 == 30 == line.x1
    assert "rows cut" in fig.layout.annotations[0].text
    assert label_balance_figure({"desirable": 3, "undesirable": 1}).data[0].y == (3, 1)


def test_load_for_stage_rows_tokenize_like_the_report(tokenizer):
    rows = load_for_stage("identity-demo", "sft").rows
    lengths = sorted(tokenize_conversation(tokenizer, r["messages"])["length"] for r in rows)
    report = validate("identity-demo", stage="sft", tokenizer=tokenizer)
    assert report.length_values == lengths and report.ok


def test_measure_row_counts_every_stage_and_flags_a_lost_answer(tokenizer):
    from backend.data import tokens

    sft = chat("What is 2+2?", "Four.")
    pair = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello there!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
    fits = tokens.measure_row(tokenizer, "sft", sft, 512)
    assert fits["length"] > 5 and not fits["lost"] and fits["error"] is None
    assert tokens.measure_row(tokenizer, "sft", sft, 4)["lost"], "an answer cut off entirely is lost"
    dpo = tokens.measure_row(tokenizer, "dpo", pair, 512)
    assert dpo["length"] > 5 and not dpo["lost"]
    rows = tokens.measure_rows([sft, sft], tokenizer, "sft", 512)
    assert [row["length"] for row in rows] == [fits["length"]] * 2


def test_pretrain_rows_are_raw_text_with_every_token_and_the_eos_trained(tmp_path, tokenizer):
    from backend.data import tokens

    text = "The lamp turns once every twelve seconds.\n\nSailors know the harbour by that slow beat. " * 40
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "lamp.txt").write_text(text)
    (tmp_path / "docs" / "short.md").write_text("A short note.")
    length = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    assert length > 64
    first = preview(str(tmp_path / "docs"), tokenizer, "pretrain", n=2, max_length=64)[0]
    # never cut at max_length (documents run on across blocks), no chat template, EOS after the document
    assert first["row"] == 1 and first["tokens"] == first["trained_tokens"] == length and not first["truncated"]
    assert first["segments"] == [{"text": text, "trained": True, "cut": False},
                                 {"text": tokenizer.eos_token, "trained": True, "cut": False}]
    assert tokens.measure_row(tokenizer, "pretrain", {"text": text}, 64) == {"length": length, "lost": False,
                                                                          "error": None}
    with pytest.raises(DataError, match="pretrain needs raw text"):
        preview("identity-demo", tokenizer, "pretrain")
