"""Reading dataset files safely: allowed folders, size limits, no pickle, streaming row by row.

Supported: .jsonl / .ndjson (streamed line by line), .json (an array of rows, or an object holding rows),
.csv / .tsv (streamed), .parquet (streamed in record batches) and folders written by `datasets.save_to_disk`.
Refused, always: pickle-based files (.pkl, .pt, .bin, ...): loading them can run arbitrary code.

Settings (read on every call, so tests and the app can change them):
    LORASTUDIO_DATA_DIRS      extra folders datasets may be read from (os.pathsep separated); the workspace
                              ($LORASTUDIO_HOME), the current working directory and the system temp dir are
                              always allowed
    LORASTUDIO_MAX_UPLOAD_MB  largest file (or saved-dataset folder) accepted, default 1024
    LORASTUDIO_MAX_ROW_MB     largest single row (one JSONL line, one CSV record), default 8

Readers yield `Record(row, data, key)` for parsed rows and `RowProblem(row, field, message)` for rows that
cannot be parsed; a problem with the whole file raises `FileRejected` (one sentence) before any row is read.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from backend import workspace

DEFAULT_MAX_UPLOAD_MB = 1024
DEFAULT_MAX_ROW_MB = 8
SNIFF_BYTES = 8192
BATCH_ROWS = 1024                      # Parquet / saved-dataset rows per batch read

TEXT_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
                   ".parquet": "parquet"}
# Formats that unpickle (or hold model weights, never data): refused by name before a byte is read.
REFUSED_EXTENSIONS = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".dill",
                      ".safetensors", ".gguf", ".h5", ".msgpack"}
SUPPORTED = ".jsonl, .json, .csv, .parquet or a datasets.save_to_disk folder"


class FileRejected(ValueError):
    """The file as a whole cannot be read; the message is one sentence (what, where, how to fix)."""


@dataclass(slots=True)
class Record:
    row: int                 # 1-based line (JSONL, CSV) or item number (JSON, Parquet, saved dataset)
    data: dict
    key: int | None = None   # hash of the raw text when cheap (JSONL), for duplicate detection


@dataclass(slots=True)
class RowProblem:
    row: int
    field: str | None
    message: str


def max_upload_bytes() -> int:
    return int(float(os.environ.get("LORASTUDIO_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024)


def max_row_bytes() -> int:
    return int(float(os.environ.get("LORASTUDIO_MAX_ROW_MB") or DEFAULT_MAX_ROW_MB) * 1024 * 1024)


def allowed_roots() -> list[Path]:
    roots = [workspace.home(), Path.cwd(), Path(tempfile.gettempdir())]
    extra = os.environ.get("LORASTUDIO_DATA_DIRS") or ""
    roots += [Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def check_allowed(path: str | Path) -> Path:
    """The resolved path, or FileRejected when it lies outside every allowed folder (symlinks followed)."""
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots()
    if not any(workspace.is_inside(resolved, root) for root in roots):
        raise FileRejected(
            f"{path} is outside the folders datasets may be read from ({', '.join(map(str, roots))}); "
            "move the file into one of them or add its folder to LORASTUDIO_DATA_DIRS")
    return resolved


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json",
                                                                "dataset_dict.json"))


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def inspect_file(path: str | Path) -> tuple[Path, str, int]:
    """Check everything that can be checked without parsing: (resolved path, reader kind, size in bytes)."""
    resolved = check_allowed(path)
    name = Path(path).name
    if not resolved.exists():
        raise FileRejected(f"{path} does not exist; check the path")
    if resolved.is_dir():
        if not is_saved_dataset(resolved):
            raise FileRejected(f"{name} is a folder but not one written by datasets.save_to_disk (no "
                               "dataset_info.json or state.json); point at a data file or a saved dataset")
        size = sum(p.stat().st_size for p in resolved.rglob("*") if p.is_file())
        _check_size(name, size)
        return resolved, "saved", size
    suffix = resolved.suffix.lower()
    if suffix in REFUSED_EXTENSIONS:
        raise FileRejected(f"{name} is a {suffix} file, which is refused because loading pickle-style files can "
                           f"run arbitrary code; export the data as {SUPPORTED}")
    size = resolved.stat().st_size
    if size == 0:
        raise FileRejected(f"{name} is empty (0 bytes); upload a file with at least 10 rows")
    _check_size(name, size)
    with open(resolved, "rb") as f:
        head = f.read(SNIFF_BYTES)
    _sniff(name, suffix, head)
    if suffix not in TEXT_EXTENSIONS:
        raise FileRejected(f"{name} has an unsupported extension '{suffix or '(none)'}'; use {SUPPORTED}")
    return resolved, TEXT_EXTENSIONS[suffix], size


def _check_size(name: str, size: int) -> None:
    limit = max_upload_bytes()
    if size > limit:
        raise FileRejected(f"{name} is {_mb(size)}, over the {_mb(limit)} upload limit; split the file or raise "
                           "LORASTUDIO_MAX_UPLOAD_MB")


def _sniff(name: str, suffix: str, head: bytes) -> None:
    """Recognise binary content whatever the extension says (a renamed .pkl must not slip through)."""
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        raise FileRejected(f"{name} is a Python pickle, which is refused because unpickling can run arbitrary "
                           f"code; export the data as {SUPPORTED}")
    if head.startswith(b"PK\x03\x04"):
        raise FileRejected(f"{name} is a zip archive (e.g. a torch checkpoint), not a data file; unzip it and "
                           f"upload the {SUPPORTED} inside")
    if head.startswith(b"PAR1"):
        if suffix != ".parquet":
            raise FileRejected(f"{name} is a Parquet file named {suffix or 'without extension'}; rename it to "
                               f"{Path(name).stem}.parquet")
        return
    if suffix == ".parquet":
        raise FileRejected(f"{name} is not a Parquet file (no PAR1 magic bytes); re-export it or use another "
                           "format")
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")):
        raise FileRejected(f"{name} is compressed; decompress it and upload the {SUPPORTED} inside")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise FileRejected(f"{name} looks binary, not text (NUL byte at byte offset {nul}); upload {SUPPORTED}")


def content_hash(path: Path) -> str:
    """sha256 of the file bytes (of every file, in name order, for a folder)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def read_records(path: Path, kind: str) -> Iterator[Record | RowProblem]:
    """Rows of an inspected file, one at a time (see inspect_file)."""
    return {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet,
            "saved": _read_saved}[kind](path)


def _not_utf8(exc: UnicodeDecodeError, offset: int) -> str:
    return (f"byte 0x{exc.object[exc.start]:02x} at byte offset {offset + exc.start} is not valid UTF-8; "
            "re-save the file as UTF-8")


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


# json's decoder messages, several of which end in "at" to be glued to a position: said once, in words
JSON_ERRORS = {
    "Unterminated string starting at": "a string starts there but its closing quote is missing",
    "Expecting value": "a value is expected there",
    "Expecting ',' delimiter": "a comma is expected there",
    "Expecting ':' delimiter": "a colon is expected there",
    "Expecting property name enclosed in double quotes": "a key in double quotes is expected there",
    "Invalid control character at": "a raw control character (tab or newline) sits inside a string; escape it "
                                     "as \\t or \\n",
    "Invalid \\escape": "an invalid backslash escape sits there",
    "Extra data": "more data follows the end of the object",
}


def json_error(exc: ValueError, with_line: bool = False) -> str:
    """'invalid JSON at column C: what is wrong' from a json.JSONDecodeError (position said once)."""
    msg = getattr(exc, "msg", None)
    if msg is None:
        return f"invalid JSON ({str(exc).strip()})"
    what = JSON_ERRORS.get(msg)
    if what is None:
        text = msg[:-3] if msg.endswith(" at") else msg
        what = text[:1].lower() + text[1:]
    where = f"line {exc.lineno} column {exc.colno}" if with_line else f"column {exc.colno}"
    return f"invalid JSON at {where}: {what}"


def _read_jsonl(path: Path) -> Iterator[Record | RowProblem]:
    limit = max_row_bytes()
    loads = json.loads
    with open(path, "rb") as f:
        offset, line_no = 0, 0
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            line_no += 1
            start = offset
            offset += len(line)
            if len(line) > limit and not line.endswith(b"\n"):
                # skip the rest of an oversized line in chunks: never hold it in memory whole
                while (chunk := f.readline(1 << 20)):
                    offset += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                yield RowProblem(line_no, None, f"the line is {_mb(offset - start)}, over the {_mb(limit)} "
                                                "per-row limit; split it into smaller rows or raise "
                                                "LORASTUDIO_MAX_ROW_MB")
                continue
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line, start = line[3:], start + 3
            line = line.strip()
            if not line:
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RowProblem(line_no, None, _not_utf8(exc, start))
                continue
            try:
                data = loads(text)
            except ValueError as exc:
                yield RowProblem(line_no, None, f"{json_error(exc)}; each line must be one complete JSON object")
                continue
            if not isinstance(data, dict):
                yield RowProblem(line_no, None, f"the line is {_type_name(data)}, not a JSON object; each line "
                                                "must be one object such as {\"messages\": [...]}")
                continue
            yield Record(line_no, data, hash(line))


def _check_utf8(path: Path) -> None:
    """Raise FileRejected naming the byte offset of the first non-UTF-8 byte (streamed, 1 MB at a time)."""
    with open(path, "rb") as f:
        offset, carry = 0, b""
        while chunk := f.read(1 << 20):
            data = carry + chunk
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as exc:
                if exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
                    carry = data[exc.start:]      # a character cut by the chunk boundary: finish it next round
                    offset += exc.start
                    continue
                raise FileRejected(f"{path.name}: {_not_utf8(exc, offset)}") from None
            offset += len(data)
        if carry:
            raise FileRejected(f"{path.name}: the file ends in the middle of a UTF-8 character at byte offset "
                               f"{offset}; re-save the file as UTF-8")


def _read_json(path: Path) -> Iterator[Record | RowProblem]:
    _check_utf8(path)
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            # one object per line saved as .json: read it as JSONL
            yield from _read_jsonl(path)
            return
        raise FileRejected(f"{path.name}: {json_error(exc, with_line=True)}; fix the file or save it as JSONL "
                           "(one object per line)") from None
    rows = _rows_of_json(path.name, data)
    del text, data
    for index, row in enumerate(rows, start=1):
        if isinstance(row, dict):
            yield Record(index, row)
        else:
            yield RowProblem(index, None, f"item is {_type_name(row)}, not an object; every item of the array "
                                          "must be an object such as {\"messages\": [...]}")


def _rows_of_json(name: str, data) -> list:
    """An array of rows, or an object holding them: {"train": [...]}, columns {"a": [..], "b": [..]}, {id: row}."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict) or not data:
        raise FileRejected(f"{name} holds {_type_name(data)}; it must be an array of row objects")
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    row_lists = {k: v for k, v in lists.items() if v and all(isinstance(x, dict) for x in v[:10])}
    if len(row_lists) == 1 and len(lists) == len(data):
        return next(iter(row_lists.values()))
    if "train" in row_lists:
        return row_lists["train"]
    if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
        keys = list(lists)
        return [dict(zip(keys, values)) for values in zip(*lists.values())]
    if all(isinstance(v, dict) for v in data.values()):
        return list(data.values())
    return [data]


def _read_csv(path: Path) -> Iterator[Record | RowProblem]:
    _check_utf8(path)
    limit = max_row_bytes()
    csv.field_size_limit(limit)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except (csv.Error, StopIteration) as exc:
            raise FileRejected(f"{path.name}: the header line cannot be read ({exc}); check the quotes") from None
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                reason = "a quote opened here is never closed" if "end of data" in str(exc) else str(exc)
                yield RowProblem(start, None, f"CSV parse error ({reason}); the rest of the file cannot be read, "
                                              "so fix the quoting on this line (double a quote inside a quoted "
                                              "field: \"\")")
                return
            row, start = start, reader.line_num + 1
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                yield RowProblem(row, None, f"the record has {len(values)} fields but the header has "
                                            f"{len(header)}; check the commas and quotes on this line")
                continue
            yield Record(row, {k: _cell(v) for k, v in zip(header, values)}, hash(tuple(values)))


def _cell(value: str):
    """CSV cells are text; cells holding JSON lists or objects (message lists) are parsed."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{") and stripped[-1:] in ("]", "}"):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return value


def _read_parquet(path: Path) -> Iterator[Record | RowProblem]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise FileRejected(f"{path.name} cannot be read as Parquet ({exc}); re-export it") from None
    index = 0
    try:
        for batch in file.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                index += 1
                yield Record(index, row)
    except Exception as exc:
        yield RowProblem(index + 1, None, f"the Parquet data cannot be decoded ({exc}); re-export the file")


def _read_saved(path: Path) -> Iterator[Record | RowProblem]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise FileRejected(f"{path.name} cannot be opened with datasets.load_from_disk ({exc}); save it again "
                           "with Dataset.save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise FileRejected(f"{path.name} holds no splits; save a dataset with rows")
        loaded = loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
    index = 0
    for batch in loaded.iter(batch_size=BATCH_ROWS):
        keys = list(batch)
        for values in zip(*batch.values()):
            index += 1
            yield Record(index, dict(zip(keys, values)))
