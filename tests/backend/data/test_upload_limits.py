"""Uploads that expand without bound, attacked for real: tiny compressed files that decode to gigabytes, too many
rows, too slow a check, and rows nested too deep for Python. Each is stopped with one sentence (naming the file, the
cap, the numbers and the fix) or, for a too-deep row, refused alone while the other rows load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backend import workspace
from backend.data import DataError, load_for_stage, register_upload, validate

ROOT = Path(__file__).resolve().parents[3]
# the settings a user sees, spelled out (not imported: this file must import, and fail, against a reader without them)
ENV_MAX_EXPANDED_MB, ENV_MAX_ROWS, ENV_MAX_CHECK_S = ("LORASTUDIO_MAX_EXPANDED_MB", "LORASTUDIO_MAX_ROWS",
                                                      "LORASTUDIO_MAX_CHECK_S")
MAX_DEPTH = 64


@pytest.fixture(autouse=True)
def default_caps(monkeypatch):
    for name in (ENV_MAX_EXPANDED_MB, ENV_MAX_ROWS, ENV_MAX_CHECK_S):
        monkeypatch.delenv(name, raising=False)


def chat(i):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def only_file_error(report):
    """The one error about the whole file (row None), and nothing was kept as usable."""
    assert not report.ok
    errors = [e for e in report.errors if e.row is None]
    assert errors, report.to_dict()
    assert not any(s.usable for s in report.stages.values())
    return errors[-1]


def chat_bomb(path: Path, rows: int, answer_kb: int, group_rows: int = 500) -> Path:
    """A real Parquet file of chats whose answer is one answer_kb string, dictionary-encoded and zstd-compressed:
    a few KB on disk, rows * answer_kb once decoded. Written without the Arrow schema (as other tools write it), so
    a reader that does not guard decodes every answer in full."""
    content = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["hi", "a" * (answer_kb << 10)]))
    message = pa.StructArray.from_arrays([pa.array(["user", "assistant"]), content], ["role", "content"])
    one_chat = pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), message)
    group = one_chat.take(pa.array(np.zeros(group_rows, np.int32)))
    with pq.ParquetWriter(path, pa.schema([("messages", group.type)]), compression="zstd", store_schema=False) as w:
        for done in range(0, rows, group_rows):
            w.write_table(pa.table({"messages": group.slice(0, min(group_rows, rows - done))}))
    return path


def test_parquet_bomb_stops_at_the_expanded_cap_before_it_is_decoded(tmp_path, monkeypatch):
    path = chat_bomb(tmp_path / "train.parquet", rows=1000, answer_kb=256)      # 250 MB of answers
    assert path.stat().st_size < 20_000
    monkeypatch.setenv(ENV_MAX_EXPANDED_MB, "8")
    tracemalloc.start()
    started = time.monotonic()
    try:
        report = validate(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = only_file_error(report)
    assert error.message == ("train.parquet expands to more than 8.0 MB of data (limit LORASTUDIO_MAX_EXPANDED_MB=8); "
                             "split the file or raise the limit")
    assert time.monotonic() - started < 5
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MB of Python objects built for a refused file"
    # nothing of it can be saved, so nothing of it can reach the queue
    with pytest.raises(DataError, match="expands to more than 8.0 MB"):
        register_upload(path)
    assert not any(workspace.datasets_dir().glob("ds-*"))


def test_default_caps_refuse_two_million_rows_from_the_footer_before_decoding(tmp_path):
    """The attack at the app's own settings: 60 KB on disk, 128 GB once decoded. Run in a child process held to
    2 GB of address space and 60 s, so that a reader without the caps fails this test instead of the machine."""
    rows = 2_000_000
    zeros = pa.array(np.zeros(rows, np.int32))
    table = pa.table({"prompt": pa.DictionaryArray.from_arrays(zeros, pa.array(["question"])),
                      "completion": pa.DictionaryArray.from_arrays(zeros, pa.array(["a" * 65536]))})
    path = tmp_path / "claims.parquet"
    pq.write_table(table, path, compression="zstd", store_schema=False)
    assert path.stat().st_size < 200_000 and pq.ParquetFile(path).metadata.num_rows == rows
    child = ("import json, resource, sys\n"
             "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
             "from backend.data import validate\n"
             "report = validate(sys.argv[1])\n"
             "print(json.dumps([e.message for e in report.errors if e.row is None]))\n")
    env = {**os.environ, "LORASTUDIO_HOME": str(tmp_path / "home")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", child, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [
        "claims.parquet holds 2,000,000 rows (limit LORASTUDIO_MAX_ROWS=1000000); split the file or raise the limit"]
    assert time.monotonic() - started < 20


def test_one_long_dictionary_entry_is_counted_exactly_not_refused(tmp_path, monkeypatch):
    """A dictionary holding one 2 MB answer among short ones bounds 1000 rows at 2 GB; the exact count (with the
    text still dictionary-encoded) finds 2 MB, so the file is read, and refused only under a cap below that."""
    indices = np.zeros(2000, np.int32)
    indices[13] = 1                                             # row 7's answer
    content = pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(["short answer", "x" * (2 << 20)]))
    message = pa.StructArray.from_arrays([pa.array(["user", "assistant"] * 1000), content], ["role", "content"])
    chats = pa.ListArray.from_arrays(pa.array(np.arange(0, 2001, 2, dtype=np.int32)), message)
    path = tmp_path / "rare.parquet"
    pq.write_table(pa.table({"messages": chats}), path, compression="zstd", store_schema=False)
    rows = load_for_stage(str(path), "sft").rows
    assert len(rows) == 1000 and len(rows[6]["messages"][1]["content"]) == 2 << 20
    monkeypatch.setenv(ENV_MAX_EXPANDED_MB, "1")
    error = only_file_error(validate(path))
    assert error.message.startswith("rare.parquet expands to 2.0 MB of data (limit LORASTUDIO_MAX_EXPANDED_MB=1)")


@pytest.mark.parametrize("settings", [{}, {"data_page_version": "2.0"}, {"compression": "gzip", "data_page_size": 512},
                                      {"compression": "brotli", "write_statistics": False},
                                      {"compression": "lz4", "write_page_index": True}, {"use_dictionary": False},
                                      {"dictionary_pagesize_limit": 64, "row_group_size": 5}])
def test_parquet_written_every_way_reads_the_same(tmp_path, settings):
    rows = [{**chat(i), "n": i, "flag": i % 2 == 0} for i in range(12)]
    path = tmp_path / "kinds.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, **settings)
    assert load_for_stage(str(path), "sft").rows == [chat(i) for i in range(12)]


def test_parquet_footer_declaring_too_much_data_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "plain.parquet"
    text = pa.array(["a" * 100_000] * 100)                   # 10 MB of plain-encoded text, a few KB compressed
    pq.write_table(pa.table({"prompt": text, "completion": text}), path, compression="zstd", use_dictionary=False)
    assert path.stat().st_size < 50_000
    monkeypatch.setenv(ENV_MAX_EXPANDED_MB, "4")
    error = only_file_error(validate(path))
    assert error.message.startswith("plain.parquet expands to 19.1 MB of data (limit LORASTUDIO_MAX_EXPANDED_MB=4)")


def test_rows_cap_stops_streamed_and_declared_files(tmp_path, monkeypatch, write_jsonl):
    monkeypatch.setenv(ENV_MAX_ROWS, "50")
    error = only_file_error(validate(write_jsonl([chat(i) for i in range(60)], "many.jsonl")))
    assert error.message == ("many.jsonl holds more than 50 rows (limit LORASTUDIO_MAX_ROWS=50); split the file or "
                             "raise the limit")
    path = tmp_path / "many.parquet"
    pq.write_table(pa.Table.from_pylist([chat(i) for i in range(60)]), path)
    error = only_file_error(validate(path))
    assert error.message.startswith("many.parquet holds 60 rows (limit LORASTUDIO_MAX_ROWS=50)")
    assert validate(write_jsonl([chat(i) for i in range(50)], "enough.jsonl")).ok


def test_saved_dataset_rows_are_counted_from_its_arrow_files(tmp_path, monkeypatch):
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([chat(i) for i in range(30)]),
                          "test": datasets.Dataset.from_list([chat(i) for i in range(5)])}).save_to_disk(str(folder))
    monkeypatch.setenv(ENV_MAX_ROWS, "20")
    error = only_file_error(validate(folder))
    assert error.message.startswith("saved holds more than 20 rows (limit LORASTUDIO_MAX_ROWS=20)")
    monkeypatch.setenv(ENV_MAX_ROWS, "30")                  # only the split that is read counts
    assert validate(folder).ok


def test_time_cap_stops_a_slow_check(tmp_path, monkeypatch, write_jsonl):
    path = write_jsonl([chat(i) for i in range(20_000)], "slow.jsonl")
    monkeypatch.setenv(ENV_MAX_CHECK_S, "0.01")
    started = time.monotonic()
    error = only_file_error(validate(path))
    assert error.message == ("slow.jsonl took more than 0.01 s to check (limit LORASTUDIO_MAX_CHECK_S=0.01); split "
                             "the file or raise the limit")
    assert time.monotonic() - started < 2


def test_compressed_text_uploads_stay_refused_unread(tmp_path):
    import gzip

    bomb = gzip.compress(b'{"messages": []}\n' * 2_000_000, compresslevel=9)     # 34 MB in
    assert len(bomb) < 200_000
    for name in ("train.jsonl.gz", "train.jsonl"):
        (tmp_path / name).write_bytes(bomb)
        error = only_file_error(validate(tmp_path / name))
        assert error.message.startswith(f"{name} is compressed; decompress it")


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_jsonl_row_nested_too_deep_is_refused_alone(write_jsonl):
    rows = [json.dumps(chat(i)) for i in range(12)]
    rows.insert(2, '{"messages": ' + deep(5000) + "}")           # row 3: past Python's own parser
    rows.insert(5, '{"messages": ' + deep(100) + "}")            # row 6: parses, too deep to walk safely
    report = validate(write_jsonl(rows, "deep.jsonl"), stage="sft")
    by_row = {e.row: e for e in report.errors}
    assert set(by_row) == {3, 6}, report.to_dict()
    assert by_row[3].sentence("deep.jsonl").startswith(
        f"deep.jsonl, row 3, field 'messages': nested 5000 levels deep (limit {MAX_DEPTH}); ")
    assert by_row[6].message.startswith(f"nested 100 levels deep (limit {MAX_DEPTH})")
    assert report.rows == 14 and report.usable_rows == 12
    assert len(load_for_stage(str(write_jsonl(rows, "deep.jsonl")), "sft", skip_invalid=True).rows) == 12
    fine = '{"messages": [], "tools": ' + deep(MAX_DEPTH) + "}"
    assert validate(write_jsonl([json.dumps(chat(i)) for i in range(12)] + [fine], "fine.jsonl")).errors[0].field \
        == "messages", "a field exactly MAX_DEPTH deep is read (and judged on its content)"


def test_json_array_item_nested_too_deep_is_refused_alone(tmp_path):
    items = [json.dumps(chat(i)) for i in range(12)]
    items.insert(1, '{"id": 1, "messages": ' + deep(3000) + "}")
    path = tmp_path / "deep.json"
    path.write_text("[\n" + ",\n".join(items) + "\n]", encoding="utf-8")
    report = validate(path, stage="sft")
    assert [(e.row, e.field) for e in report.errors] == [(2, "messages")], report.to_dict()
    assert "nested 3000 levels deep" in report.errors[0].message and report.usable_rows == 12
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"train": [' + ", ".join(items) + "]}", encoding="utf-8")
    error = only_file_error(validate(wrapped))
    assert error.message.startswith(f"wrapped.json: line 1 column 186 is nested more than {MAX_DEPTH} levels deep "
                                    "(3003 in all), too deep for Python's JSON parser; flatten it, or save the rows "
                                    "as JSONL")


def test_csv_cell_nested_too_deep_is_refused_alone(tmp_path):
    cell = '"' + deep(4000) + '"'
    lines = ["prompt,completion"] + [f"q{i},a{i}" for i in range(12)]
    lines.insert(4, f"q,{cell}")
    path = tmp_path / "deep.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate(path, stage="sft")
    assert [(e.row, e.field) for e in report.errors] == [(5, "completion")], report.to_dict()
    assert report.errors[0].message.startswith("nested 4000 levels deep") and report.usable_rows == 12
