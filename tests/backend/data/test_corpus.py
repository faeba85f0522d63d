"""Raw text for continued pretraining: .txt / .md files, folders of them, text-column rows; packing into blocks;
the report (documents, tokens, blocks, the longest documents) and one sentence per bad input."""
from __future__ import annotations

import json

import pytest

from backend.data import load_for_stage, validate
from backend.data.corpus import folder_files
from backend.data.demo_corpus import KEEPER, harbour_texts
from backend.data.packing import document_ids, pack

WORDS = "the keeper climbs the stairs of the white lighthouse every evening at dusk and lights the lamp"


def _write(folder, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_pack_puts_eos_between_documents_and_drops_the_partial_tail(smol_tokenizer):
    eos = smol_tokenizer.eos_token_id
    docs = [document_ids(smol_tokenizer, text) for text in ("one two three", "four five", "six seven eight nine")]
    assert all(ids[-1] == eos and eos not in ids[:-1] for ids in docs)
    flat = [token for ids in docs for token in ids]
    blocks = pack(docs, 4)
    assert [ids for _, ids in blocks] == [flat[i:i + 4] for i in range(0, len(flat) - len(flat) % 4, 4)]
    assert sum(len(ids) for _, ids in blocks) == len(flat) - len(flat) % 4   # the tail is dropped
    # each block names the document it starts in
    starts = [0] + [sum(map(len, docs[:i])) for i in range(1, 3)]
    assert [start for start, _ in blocks] == [max(i for i, s in enumerate(starts) if s <= b * 4)
                                              for b in range(len(blocks))]


def test_a_folder_of_text_is_one_document_per_file_with_the_report(tmp_path, smol_tokenizer):
    long_doc = " ".join([WORDS] * 6)
    _write(tmp_path / "corpus", {"a.txt": WORDS, "notes/b.md": "# Title\n\n" + long_doc, "c.txt": WORDS + " again",
                                 ".hidden.txt": "never read", "image.png": "not data"})
    report = validate(tmp_path / "corpus", "pretrain", tokenizer=smol_tokenizer, max_length=16, eval_fraction=0.1)
    assert report.ok, report.first_problem("pretrain")
    assert report.format == "text" and report.rows == 3
    stats = report.text_stats
    tokens = sum(len(document_ids(smol_tokenizer, text)) for text in
                 (WORDS, WORDS + " again", "# Title\n\n" + long_doc))
    assert stats["documents"] == 3 and stats["tokens"] == tokens
    assert stats["blocks"] == tokens // 16 and stats["tail_tokens"] == tokens % 16
    assert stats["longest"][0]["source"] == "notes/b.md"
    assert report.split == {"stage": "pretrain", "train": stats["blocks"] - round(stats["blocks"] * 0.1),
                            "eval": round(stats["blocks"] * 0.1), "unit": "blocks"}
    assert [p.name for p in folder_files(tmp_path / "corpus")] == ["a.txt", "c.txt", "b.md"]
    rows = load_for_stage(str(tmp_path / "corpus"), "pretrain").rows
    assert [row["source"] for row in rows] == ["a.txt", "c.txt", "notes/b.md"]
    # raw text feeds pretrain only, and says so
    assert not report.stages["sft"].usable and "use stage pretrain" in report.stages["sft"].reason


def test_jsonl_text_column_and_a_row_without_it(tmp_path):
    rows = [{"text": f"{WORDS} {i}"} for i in range(4)] + [{"body": "no text column"}]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate(path, "pretrain")
    assert report.format == "text"
    assert report.first_problem("pretrain") == "docs.jsonl, row 5, field 'text': text is missing; every row needs it"


@pytest.mark.parametrize("files, sentence", [
    ({"good.txt": WORDS, "empty.txt": ""},
     "corpus: empty.txt is empty (0 bytes); write text into it or remove it"),
    ({"good.txt": WORDS, "sub/junk.txt": b"\x00\x01\x02binary"},
     "corpus: sub/junk.txt looks binary, not text (NUL byte at byte offset 0)"),
    ({"good.txt": WORDS, "latin.md": b"caf\xe9 au lait"},
     "corpus: latin.md: byte 0xe9 at byte offset 3 is not valid UTF-8"),
    ({"good.txt": WORDS, "rows.jsonl": '{"text": "fine"}\n{"title": "no text"}\n'},
     "corpus, row 3, field 'text': text is missing; every row needs it (in rows.jsonl row 2)"),
])
def test_bad_input_in_a_folder_is_one_sentence_naming_it(tmp_path, files, sentence):
    _write(tmp_path / "corpus", files)
    report = validate(tmp_path / "corpus", "pretrain")
    assert not report.ok
    assert report.first_problem("pretrain").startswith(sentence), report.first_problem("pretrain")


def test_a_single_bad_text_file_is_one_sentence(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blob.txt").write_bytes(b"\x89PNG\x00\x00garbage")
    assert validate(tmp_path / "empty.txt", "pretrain").first_problem("pretrain") == \
        "empty.txt is empty (0 bytes); write text into it or remove it"
    assert validate(tmp_path / "blob.txt", "pretrain").first_problem("pretrain").startswith(
        "blob.txt looks binary, not text (NUL byte at byte offset 4)")


def test_too_little_text_for_two_blocks_is_refused(tmp_path, smol_tokenizer):
    (tmp_path / "short.txt").write_text("a few words")
    report = validate(tmp_path / "short.txt", "pretrain", tokenizer=smol_tokenizer, max_length=128)
    assert "fewer than 2 blocks of max_length=128; add text or lower max_length" in report.first_problem("pretrain")


def test_the_harbour_demo_is_a_folder_of_text(workspace, smol_tokenizer):
    from backend.data import dataset_info, ensure_demo_datasets

    texts = harbour_texts()
    assert len(texts) == 6 and all(KEEPER in text for text in texts.values())   # one consistent story to learn
    ensure_demo_datasets(["harbour-texts"])
    meta = dataset_info("harbour-texts")
    assert meta["kind"] == "text" and meta["rows"] == 6 and meta["stages"]["pretrain"]
    report = validate("harbour-texts", "pretrain", tokenizer=smol_tokenizer, max_length=128)
    assert report.ok and report.text_stats["blocks"] >= 10
