"""Files in every supported container, and every kind of bad file refused with one clear sentence."""
from __future__ import annotations

import json
import pickle
import time

import pytest

from backend.data import DataError, load_for_stage, validate


def chat(i):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def only_error(report):
    assert not report.ok
    assert report.errors, report.to_dict()
    return report.errors[0]


def test_json_array_object_and_columns(tmp_path):
    rows = [chat(i) for i in range(12)]
    shapes = {"array.json": rows, "wrapped.json": {"data": rows}, "split.json": {"train": rows, "meta": {"v": 1}},
              "keyed.json": {str(i): r for i, r in enumerate(rows)},
              "columns.json": {"prompt": [f"p{i}" for i in range(12)], "completion": [f"c{i}" for i in range(12)]}}
    for name, content in shapes.items():
        path = tmp_path / name
        path.write_text(json.dumps(content), encoding="utf-8")
        report = validate(path, stage="sft")
        assert report.ok and report.rows == 12, (name, report.to_dict())


def test_json_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"messages": []},\n {"messages": [}\n]', encoding="utf-8")
    error = only_error(validate(path))
    assert "line 3 column" in error.message and error.row is None


def test_csv_with_json_cells_and_plain_columns(tmp_path):
    path = tmp_path / "data.csv"
    lines = ["prompt,completion"] + [f'"question, {i}","answer ""{i}"""' for i in range(12)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = load_for_stage(str(path), "sft").rows
    assert rows[3]["messages"] == [{"role": "user", "content": "question, 3"},
                                   {"role": "assistant", "content": 'answer "3"'}]
    path = tmp_path / "messages.csv"
    cell = json.dumps(chat(1)["messages"]).replace('"', '""')
    path.write_text("messages\n" + "".join(f'"{cell}"\n' for _ in range(12)), encoding="utf-8")
    assert validate(path).format == "messages"


def test_csv_broken_quote_names_the_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('prompt,completion\nq1,a1\nq2,"a2 never closed\nq3,a3\n', encoding="utf-8")
    report = validate(path)
    error = next(e for e in report.errors if e.row is not None)
    assert error.row == 3 and "quote" in error.message
    assert not report.ok


def test_csv_wrong_field_count(tmp_path):
    path = tmp_path / "fields.csv"
    path.write_text("prompt,completion\n" + "".join(f"q{i},a{i}\n" for i in range(12)) + "q,a,extra\n")
    error = only_error(validate(path))
    assert error.row == 14 and "3 fields but the header has 2" in error.message


def test_parquet_and_nested_columns_in_the_wrong_shape(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([chat(i) for i in range(12)]), good)
    assert load_for_stage(str(good), "sft").rows[5] == chat(5)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"messages": [[["user", "hi"], ["assistant", "yo"]] for _ in range(12)]}), bad)
    report = validate(bad)
    error = only_error(report)
    assert error.field == "messages[0]" and "expected a message object with role and content, got a list" \
        in error.message
    assert error.count == 12 and error.rows == [1, 2, 3, 4, 5]


def test_saved_to_disk_folder(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"}
                                for i in range(12)]).save_to_disk(str(folder))
    report = validate(folder, stage="dpo")
    assert report.ok and report.format == "preference"
    dd = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([chat(i) for i in range(12)])}).save_to_disk(str(dd))
    assert len(load_for_stage(str(dd), "sft").rows) == 12
    empty = tmp_path / "folder"
    empty.mkdir()
    assert "save_to_disk" in only_error(validate(empty)).message


@pytest.mark.parametrize("name", ["data.pkl", "model.pt", "weights.bin", "x.pickle"])
def test_pickle_style_uploads_are_refused_unread(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(pickle.dumps([chat(1)]))
    error = only_error(validate(path))
    assert "refused" in error.message and "arbitrary code" in error.message
    with pytest.raises(DataError, match="refused"):
        load_for_stage(str(path), "sft")


def test_pickle_renamed_jsonl_and_binary_renamed_jsonl(tmp_path):
    disguised = tmp_path / "data.jsonl"
    disguised.write_bytes(pickle.dumps([chat(1)], protocol=4))
    assert "pickle" in only_error(validate(disguised)).message
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"a": 1}\n' + bytes(range(256)) * 4)
    error = only_error(validate(binary))
    assert "binary" in error.message and "byte offset 9" in error.message
    parquet = tmp_path / "table.jsonl"
    parquet.write_bytes(b"PAR1" + b"\x00" * 100)
    assert "rename it to table.parquet" in only_error(validate(parquet)).message


def test_non_utf8_bytes_name_the_offset(tmp_path, write_jsonl):
    rows = [json.dumps(chat(i)) for i in range(12)]
    path = tmp_path / "latin.jsonl"
    content = ("\n".join(rows[:2]) + "\n").encode() + '{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'.encode(
        "latin-1") + ("\n".join(rows[2:]) + "\n").encode()
    path.write_bytes(content)
    report = validate(path)
    error = only_error(report)
    offset = content.index(b"\xe9")
    assert error.row == 3 and f"byte 0xe9 at byte offset {offset}" in error.message
    assert report.usable_rows == 12
    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes(b"prompt,completion\n" + b"caf\xe9,x\n" * 12)
    assert "byte offset 21" in only_error(validate(csv_path)).message


def test_empty_file_and_blank_lines(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "empty" in only_error(validate(empty)).message
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    assert "no rows" in only_error(validate(blank)).message


def test_file_over_the_size_limit(tmp_path, monkeypatch, write_jsonl):
    path = write_jsonl([chat(i) for i in range(20000)])
    monkeypatch.setenv("LORASTUDIO_MAX_UPLOAD_MB", "0.5")
    error = only_error(validate(path))
    assert "upload limit" in error.message and "LORASTUDIO_MAX_UPLOAD_MB" in error.message


def test_50mb_single_line_is_reported_fast_without_holding_it(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"messages": [{"role": "user", "content": "' + b"x" * (50 * 1024 * 1024) + b'"}]}\n')
        for i in range(12):
            f.write(json.dumps(chat(i)).encode() + b"\n")
    started = time.perf_counter()
    report = validate(path)
    assert time.perf_counter() - started < 5
    error = only_error(report)
    assert error.row == 1 and "per-row limit" in error.message and "50.0 MB" in error.message
    assert report.rows == 13 and report.usable_rows == 12


def test_invalid_json_lines_and_non_objects(write_jsonl):
    rows = [json.dumps(chat(i)) for i in range(12)]
    path = write_jsonl(rows[:4] + ['{"messages": [', "[1, 2]"] + rows[4:])
    report = validate(path)
    assert [(e.row, e.message.split(":")[0].split(",")[0]) for e in report.errors] == [
        (5, "invalid JSON at column 15"), (6, "the line is a list")]
    assert report.rows == 14 and report.usable_rows == 12 and not report.ok


def test_path_outside_the_allowed_folders(tmp_path, monkeypatch):
    error = only_error(validate("/etc/hostname" if __import__("os").path.exists("/etc/hostname") else "/etc/passwd"))
    assert "outside the folders" in error.message and "LORASTUDIO_DATA_DIRS" in error.message
    with pytest.raises(DataError, match="outside the folders"):
        load_for_stage("/etc/passwd", "sft")


def test_data_dirs_env_extends_the_allowed_folders(tmp_path, monkeypatch):
    import os

    outside = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    if outside is None:
        pytest.skip("no writable folder outside the default roots")
    path = os.path.join(outside, f"lorastudio-test-{os.getpid()}.jsonl")
    try:
        with open(path, "w") as f:
            f.writelines(json.dumps(chat(i)) + "\n" for i in range(12))
        assert "outside the folders" in only_error(validate(path)).message
        monkeypatch.setenv("LORASTUDIO_DATA_DIRS", outside)
        assert validate(path).ok
    finally:
        os.remove(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.xml"      # .txt / .md are raw text now (tests/backend/data/test_corpus.py)
    path.write_text("hello\n")
    assert "unsupported extension '.xml'" in only_error(validate(path)).message


def test_csv_kto_with_text_labels_and_jsonl_saved_as_json(tmp_path):
    path = tmp_path / "feedback.csv"
    path.write_text("prompt,completion,label\n" + "".join(
        f"q{i},a{i},{'true' if i % 2 else 'false'}\n" for i in range(12)))
    rows = load_for_stage(str(path), "kto").rows
    assert [r["label"] for r in rows[:2]] == [False, True]
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(12)))
    report = validate(lines, stage="sft")
    assert report.ok and report.rows == 12


def test_inspect_file_reads_the_content_not_the_name_and_keeps_to_the_allowed_folders(tmp_path, workspace):
    from backend.data import readers

    good = tmp_path / "rows.jsonl"
    good.write_text('{"messages": []}\n')
    assert readers.inspect_file(good) == (good.resolve(), "jsonl", good.stat().st_size)
    disguised = tmp_path / "rows.csv"
    disguised.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(readers.FileRejected, match="rows.csv is a Python pickle"):
        readers.inspect_file(disguised)
    with pytest.raises(readers.FileRejected, match="outside the folders datasets may be read from.*DATA_DIRS"):
        readers.check_allowed("/proc/self/environ")
