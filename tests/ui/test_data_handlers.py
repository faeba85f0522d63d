"""Data tab handlers, without a browser: report with row numbers, mapping offer, histogram, register."""
import json

from ui import data_tab


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def chat(i):
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}


def test_demo_dataset_report_is_usable():
    result = data_tab.check("identity-demo", "sft", None, 512)
    assert result.ok and "usable for SFT" in result.report_md and "| SFT | yes |" in result.report_md
    assert not result.mapping_visible


def test_broken_row_is_reported_with_its_row_number(workspace):
    path = write_jsonl(workspace / "broken.jsonl", [chat(i) for i in range(20)] + ["{not json"])
    result = data_tab.check(str(path), "sft", None, 512)
    assert "row 21" in result.report_md and "Errors" in result.report_md


def test_unknown_columns_offer_a_mapping_and_the_mapping_fixes_it(workspace):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    path = write_jsonl(workspace / "qa.jsonl", rows)
    result = data_tab.check(str(path), "sft", None, 512)
    assert result.mapping_visible and set(result.columns) == {"question", "answer"} and not result.ok
    fixed = data_tab.check(str(path), "sft", None, 512, {"prompt": "question", "completion": "answer"})
    assert fixed.ok, fixed.report_md


def test_register_upload_then_it_is_listed(workspace):
    path = write_jsonl(workspace / "mine.jsonl", [chat(i) for i in range(20)])
    dataset_id = data_tab.register(str(path), "mine")
    assert dataset_id in [value for _, value in data_tab.source_choices()]


def test_histogram_without_a_model_explains_itself():
    report = data_tab.validate("identity-demo", "sft", None, 512)
    fig = data_tab.histogram(report)
    assert "ready model" in json.dumps(fig.to_dict())


def test_preview_and_histogram_with_the_tokenizer(tiny_model):
    result = data_tab.check("identity-demo", "sft", tiny_model, 64)
    assert "ls-trained" in result.preview and "max_length 64" in json.dumps(result.figure.to_dict())


def test_conversational_kto_file_is_kto_and_unread_columns_offer_a_mapping(workspace):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}], "label": i % 2 == 0, "source": "logs"}
            for i in range(20)]
    path = write_jsonl(workspace / "feedback.jsonl", rows)
    result = data_tab.check(str(path), "kto", None, 512)
    assert result.ok, result.report_md
    assert "KTO conversations" in result.report_md and "| KTO | yes | 20 |" in result.report_md
    assert "SFT trains on the 10 rows labelled true only" in result.report_md
    assert "column 'source' is not read" in result.report_md
    assert result.mapping_visible                        # a column the detector did not use
    clean = write_jsonl(workspace / "clean.jsonl", [{k: v for k, v in r.items() if k != "source"} for r in rows])
    assert not data_tab.check(str(clean), "kto", None, 512).mapping_visible


def test_register_with_a_taken_name_is_one_sentence(workspace):
    import pytest
    from backend.data import DataError

    assert data_tab.register(str(write_jsonl(workspace / "a.jsonl", [chat(i) for i in range(20)])), "mine") == "mine"
    with pytest.raises(DataError, match="^dataset name 'mine' is already used by ds-"):
        data_tab.register(str(write_jsonl(workspace / "b.jsonl", [chat(i + 50) for i in range(20)])), "mine")


def test_raw_text_has_its_own_report_preview_and_figure(workspace, tiny_model):
    words = "the keeper climbs the white lighthouse every evening and lights the lamp"
    folder = workspace / "corpus"
    (folder / "notes").mkdir(parents=True)
    texts = {"a.txt": words, "notes/long.md": " ".join([words] * 20), "b.txt": words + " again"}
    for name, text in texts.items():
        (folder / name).write_text(text)
    tokenizer = data_tab.tokenizer_for(tiny_model)
    lengths = {name: len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for name, text in texts.items()}
    tokens = sum(lengths.values())

    result = data_tab.check(str(folder), "pretrain", tiny_model, 16)
    assert result.ok, result.report_md
    md = result.report_md
    assert f"3 documents · {tokens} tokens" in md
    assert f"**{tokens // 16} full blocks** of max_length 16 · {tokens % 16} tail tokens dropped" in md
    held = round(tokens // 16 * 0.1)
    assert f"split {tokens // 16 - held} train / {held} eval blocks" in md
    # the longest documents, longest first, with the file each came from
    assert f"| row 3 | notes/long.md | {lengths['notes/long.md']} |" in md
    assert md.index("notes/long.md") < md.index("| b.txt |") < md.index("| a.txt |")
    # the preview shows raw text, every token and the EOS after it trained, no chat template
    assert "no chat template" in result.preview and "<|im_start|>" not in result.preview
    assert f"row 1: {lengths['a.txt']} tokens, {lengths['a.txt']} trained" in result.preview
    assert f">{html_escape(tokenizer.eos_token)}</mark>" in result.preview
    figure = json.dumps(result.figure.to_dict())
    assert f"Tokens packed into {tokens // 16} blocks of 16" in figure

    # without a tokenizer the report says what is missing; SFT on raw text says which stage to use
    bare = data_tab.check(str(folder), "pretrain", None, 16)
    assert "need a ready model's tokenizer" in bare.report_md and "full blocks" not in bare.report_md
    sft = data_tab.check(str(folder), "sft", tiny_model, 16)
    assert not sft.ok and "use stage pretrain" in sft.report_md


def test_too_little_text_for_two_blocks_is_one_sentence(workspace, tiny_model):
    (workspace / "short.txt").write_text("a lamp")
    result = data_tab.check(str(workspace / "short.txt"), "pretrain", tiny_model, 512)
    assert not result.ok
    assert "fewer than 2 blocks of max_length=512; add text or lower max_length" in result.report_md


def html_escape(text: str) -> str:
    import html
    return html.escape(text)


def test_tool_calls_are_counted_and_shown_inside_the_trained_span(tiny_model):
    result = data_tab.check("tool-calls-demo", "sft", tiny_model, 512)
    assert "Tool calls: **50** rows train an assistant tool call · written in the Hermes format" in result.report_md
    # the preview marks the call as trained text (the JSON inside <tool_call>, HTML-escaped)
    assert "ls-trained" in result.preview and "&lt;tool_call&gt;" in result.preview
    import re
    trained = "".join(re.findall(r'<mark class="ls-trained"[^>]*>(.*?)</mark>', result.preview, re.S))
    assert "&lt;tool_call&gt;" in trained and ("&quot;name&quot;" in trained or '"name"' in trained)
    assert "&lt;tools&gt;" not in trained                 # the schemas are prompt, not answer
