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
    LORASTUDIO_MAX_EXPANDED_MB  most data one check may decode, default 1024 (what a plain upload may hold: a
                              20 KB Parquet file can decode to gigabytes)
    LORASTUDIO_MAX_ROWS       most rows one check may read, default 1,000,000
    LORASTUDIO_MAX_CHECK_S    most seconds one check may take (reading and checking the rows), default 120

Readers yield `Record(row, data, key)` for parsed rows and `RowProblem(row, field, message)` for rows that
cannot be parsed or nest deeper than MAX_DEPTH; a problem with the whole file raises `FileRejected` (one
sentence): before any row is read, or while reading when a check passes one of its caps (`Budget`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from backend import workspace

ENV_DATA_DIRS = "LORASTUDIO_DATA_DIRS"
ENV_MAX_UPLOAD_MB = "LORASTUDIO_MAX_UPLOAD_MB"
ENV_MAX_ROW_MB = "LORASTUDIO_MAX_ROW_MB"
ENV_MAX_EXPANDED_MB = "LORASTUDIO_MAX_EXPANDED_MB"
ENV_MAX_ROWS = "LORASTUDIO_MAX_ROWS"
ENV_MAX_CHECK_S = "LORASTUDIO_MAX_CHECK_S"
DEFAULT_MAX_UPLOAD_MB = 1024
DEFAULT_MAX_ROW_MB = 8
DEFAULT_MAX_EXPANDED_MB = DEFAULT_MAX_UPLOAD_MB   # compression must not let in more than a plain file may hold
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_CHECK_S = 120
MAX_DEPTH = 64                         # levels of lists / objects one field may nest (Python's parser stops ~1000)
MB = 1024 * 1024
SNIFF_BYTES = 8192
BATCH_ROWS = 1024                      # Parquet / saved-dataset rows per batch read
COUNT_ROWS = 65536                     # Parquet rows per dictionary-encoded batch counted before expanding (each
                                       # batch re-sends its dictionaries: few, large batches keep that cheap)

TEXT_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
                   ".parquet": "parquet", ".txt": "text", ".md": "text"}   # text: one document (backend.data.corpus)
# Formats that unpickle (or hold model weights, never data): refused by name before a byte is read.
REFUSED_EXTENSIONS = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".dill",
                      ".safetensors", ".gguf", ".h5", ".msgpack"}
SUPPORTED = ".jsonl, .json, .csv, .parquet, .txt, .md, a folder of them or a datasets.save_to_disk folder"


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


def _setting(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def max_upload_bytes() -> int:
    return int(_setting(ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB) * MB)


def max_row_bytes() -> int:
    return int(_setting(ENV_MAX_ROW_MB, DEFAULT_MAX_ROW_MB) * MB)


class Budget:
    """What checking one file may cost: bytes of decoded data, rows and seconds (settings read per check).

    Compressed data (Parquet, Arrow) can expand a hundred-thousandfold. What a file says it holds in all (a Parquet
    footer) is refused before anything is decoded (`declare`); what is about to be decoded is refused when it is
    known in a cheaper form (page headers, dictionary-encoded text, `expect`); and the readers count what they
    decode as they go (`add`). The first cap passed stops the check with one sentence (FileRejected).
    """

    def __init__(self, name: str):
        self.name = name
        self.limit_mb = _setting(ENV_MAX_EXPANDED_MB, DEFAULT_MAX_EXPANDED_MB)
        self.max_bytes = int(self.limit_mb * MB)
        self.max_rows = int(_setting(ENV_MAX_ROWS, DEFAULT_MAX_ROWS))
        self.max_seconds = _setting(ENV_MAX_CHECK_S, DEFAULT_MAX_CHECK_S)
        self.started = time.monotonic()
        self.rows = 0
        self.bytes = 0

    def declare(self, rows: int, nbytes: int) -> None:
        """Refuse a file by what it says it holds in all, before any of it is decoded."""
        if rows > self.max_rows:
            raise FileRejected(self._rows_sentence(f"{rows:,}"))
        if nbytes > self.max_bytes:
            raise FileRejected(self._bytes_sentence(_mb(nbytes)))

    def expect(self, rows: int, nbytes: int) -> None:
        """Refuse rows / bytes about to be decoded when, on top of those counted, they would pass a cap."""
        self._check(self.rows + rows, self.bytes + nbytes)

    def fits(self, nbytes: int) -> bool:
        return self.bytes + nbytes <= self.max_bytes

    def add(self, rows: int = 1, nbytes: int = 0) -> None:
        """Count rows and decoded bytes just read; called before the rows become Python objects."""
        self.rows += rows
        self.bytes += nbytes
        self._check(self.rows, self.bytes)

    def tick(self) -> None:
        """The clock: the check (reading and the row checks that run between reads) stops at its time cap."""
        if time.monotonic() - self.started > self.max_seconds:
            raise FileRejected(f"{self.name} took more than {self.max_seconds:g} s to check (limit "
                               f"{ENV_MAX_CHECK_S}={self.max_seconds:g}); split the file or raise the limit")

    def _check(self, rows: int, nbytes: int) -> None:
        if rows > self.max_rows:
            raise FileRejected(self._rows_sentence(f"more than {self.max_rows:,}"))
        if nbytes > self.max_bytes:
            raise FileRejected(self._bytes_sentence(f"more than {_mb(self.max_bytes)}"))
        self.tick()

    def _rows_sentence(self, count: str) -> str:
        return (f"{self.name} holds {count} rows (limit {ENV_MAX_ROWS}={self.max_rows}); split the file or raise "
                "the limit")

    def _bytes_sentence(self, size: str) -> str:
        return (f"{self.name} expands to {size} of data (limit {ENV_MAX_EXPANDED_MB}={self.limit_mb:g}); split the "
                "file or raise the limit")


def allowed_roots() -> list[Path]:
    roots = [workspace.home(), Path.cwd(), Path(tempfile.gettempdir())]
    extra = os.environ.get(ENV_DATA_DIRS) or ""
    roots += [Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip()]
    return [r.resolve() for r in roots]


def check_allowed(path: str | Path) -> Path:
    """The resolved path, or FileRejected when it lies outside every allowed folder (symlinks followed)."""
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots()
    if not any(workspace.is_inside(resolved, root) for root in roots):
        raise FileRejected(
            f"{path} is outside the folders datasets may be read from ({', '.join(map(str, roots))}); "
            f"move the file into one of them or add its folder to {ENV_DATA_DIRS}")
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
        from backend.data import corpus

        saved = is_saved_dataset(resolved)
        if not saved:
            corpus.check_folder(resolved, name)       # a folder of text / data files (continued pretraining)
        size = sum(p.stat().st_size for p in resolved.rglob("*") if p.is_file())
        _check_size(name, size)
        return resolved, "saved" if saved else "folder", size
    suffix = resolved.suffix.lower()
    if suffix in REFUSED_EXTENSIONS:
        raise FileRejected(f"{name} is a {suffix} file, which is refused because loading pickle-style files can "
                           f"run arbitrary code; export the data as {SUPPORTED}")
    size = resolved.stat().st_size
    if size == 0:
        advice = "write text into it or remove it" if TEXT_EXTENSIONS.get(suffix) == "text" else \
            "upload a file with at least 10 rows"
        raise FileRejected(f"{name} is empty (0 bytes); {advice}")
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
                           f"{ENV_MAX_UPLOAD_MB}")


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
    """Rows of an inspected file, one at a time (see inspect_file), within one Budget (the clock starts now)."""
    if kind in ("text", "folder"):
        from backend.data import corpus

        return (corpus.read_text if kind == "text" else corpus.read_folder)(path, Budget(path.name))
    return READERS[kind](path, Budget(path.name))


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


def _read_jsonl(path: Path, budget: Budget) -> Iterator[Record | RowProblem]:
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
                budget.add(1, offset - start)
                yield RowProblem(line_no, None, f"the line is {_mb(offset - start)}, over the {_mb(limit)} "
                                                "per-row limit; split it into smaller rows or raise "
                                                "LORASTUDIO_MAX_ROW_MB")
                continue
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line, start = line[3:], start + 3
            line = line.strip()
            if not line:
                continue
            budget.add(1, len(line))
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RowProblem(line_no, None, _not_utf8(exc, start))
                continue
            try:
                data = loads(text)
            except RecursionError:           # Python's parser gives up ~1000 levels down: find where, in the text
                data = _deep_text(line_no, text, 0)
            except ValueError as exc:
                yield RowProblem(line_no, None, f"{json_error(exc)}; each line must be one complete JSON object")
                continue
            if isinstance(data, RowProblem):
                yield data
                continue
            if not isinstance(data, dict):
                yield RowProblem(line_no, None, f"the line is {_type_name(data)}, not a JSON object; each line "
                                                "must be one object such as {\"messages\": [...]}")
                continue
            yield _checked_row(line_no, data, hash(line), _may_nest_deep(text))


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


def _read_json(path: Path, budget: Budget) -> Iterator[Record | RowProblem]:
    _check_utf8(path)
    text = path.read_text(encoding="utf-8-sig")
    start = _JSON_SPACE.match(text).end()
    if text.startswith("[", start):
        yield from _json_array(path.name, text, start, budget)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            # one object per line saved as .json: read it as JSONL
            yield from _read_jsonl(path, budget)
            return
        raise _json_file_error(path.name, exc) from None
    except RecursionError:
        first = _nesting(text, start)
        if text[first.end:].strip():         # more objects follow the first: one object per line, read as JSONL
            yield from _read_jsonl(path, budget)
            return
        raise FileRejected(f"{path.name}: {_line_column(text, first.deep_at)} is nested more than {MAX_DEPTH} "
                           f"levels deep ({first.depth} in all), too deep for Python's JSON parser; flatten it, or "
                           "save the rows as JSONL so that only that row is refused") from None
    budget.add(0, len(text))
    rows = _rows_of_json(path.name, data)
    del text, data
    for index, row in enumerate(rows, start=1):
        budget.add(1)
        yield _json_item(index, row, deep=True)


def _json_file_error(name: str, exc: json.JSONDecodeError) -> FileRejected:
    return FileRejected(f"{name}: {json_error(exc, with_line=True)}; fix the file or save it as JSONL (one object "
                        "per line)")


def _json_item(index: int, item, deep: bool) -> Record | RowProblem:
    if not isinstance(item, dict):
        return RowProblem(index, None, f"item is {_type_name(item)}, not an object; every item of the array must "
                                       "be an object such as {\"messages\": [...]}")
    return _checked_row(index, item, None, deep)


def _json_array(name: str, text: str, start: int, budget: Budget) -> Iterator[Record | RowProblem]:
    """The items of a top-level JSON array, parsed one by one: an item too deep for Python's parser is refused
    alone (found in the text), the others are read."""
    decode = json.JSONDecoder().raw_decode
    pos = _JSON_SPACE.match(text, start + 1).end()
    index = 0
    more = not text.startswith("]", pos)
    while more:
        index += 1
        try:
            item, end = decode(text, pos)
            problem = None
        except RecursionError:
            found = _nesting(text, pos)
            item, end, problem = None, found.end, _deep_text(index, text, pos, found)
        except json.JSONDecodeError as exc:
            raise _json_file_error(name, exc) from None
        budget.add(1, end - pos)
        yield problem or _json_item(index, item, _may_nest_deep(text, pos, end))
        pos = _JSON_SPACE.match(text, end).end()
        more = text.startswith(",", pos)
        if more:
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise _json_file_error(name, json.JSONDecodeError("Expecting ',' delimiter", text, pos))
    end = _JSON_SPACE.match(text, pos + 1).end()
    if end < len(text):
        raise _json_file_error(name, json.JSONDecodeError("Extra data", text, end))


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


def _read_csv(path: Path, budget: Budget) -> Iterator[Record | RowProblem]:
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
            budget.add(1, sum(map(len, values)))
            if len(values) != len(header):
                yield RowProblem(row, None, f"the record has {len(values)} fields but the header has "
                                            f"{len(header)}; check the commas and quotes on this line")
                continue
            yield _csv_row(row, header, values)


def _csv_row(row: int, header: list[str], values: list[str]) -> Record | RowProblem:
    data = {}
    for column, value in zip(header, values):
        try:
            data[column] = _cell(value)
        except RecursionError:
            return _too_deep(row, column, _nesting(value, len(value) - len(value.lstrip())).depth)
    return _checked_row(row, data, hash(tuple(values)), any(_may_nest_deep(v) for v in values))


def _cell(value: str):
    """CSV cells are text; cells holding JSON lists or objects (message lists) are parsed."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{") and stripped[-1:] in ("]", "}"):
        try:
            return json.loads(stripped)
        except ValueError:
            pass
    return value


# ---- nesting depth: Python's JSON parser and every recursive walk over a row stop ~1000 levels down, so a row
# nested deeper than MAX_DEPTH is refused alone (its file, row and field named) before anything walks it.

_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:]')   # strings (skipped whole), brackets, colons


@dataclass(slots=True)
class Nesting:
    end: int              # offset just past the value
    depth: int            # deepest level of lists / objects, the value itself being level 1
    key: str | None       # the top-level key whose value holds the deepest point (None: not an object)
    deep_at: int          # offset of the first bracket MAX_DEPTH + 1 levels down (or of the deepest one)


def _nesting(text: str, start: int = 0) -> Nesting:
    """How deep the JSON value at text[start] nests, read from its brackets alone (no parsing, no recursion)."""
    depth = deepest = 0
    key = deepest_key = last_string = None
    deep_at = start
    for token in _JSON_TOKEN.finditer(text, start):
        char = token.group()[0]
        if char == '"':
            last_string = token.group()
        elif char == ":":
            if depth == 1:
                key = last_string
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_key = depth, key
                if deepest <= MAX_DEPTH + 1:
                    deep_at = token.start()
        else:
            depth -= 1
            if depth <= 0:
                return Nesting(token.end(), deepest, _key_name(deepest_key), deep_at)
    return Nesting(len(text), deepest, _key_name(deepest_key), deep_at)


def _key_name(literal: str | None) -> str | None:
    try:
        return None if literal is None else str(json.loads(literal))
    except ValueError:
        return literal.strip('"')


def _line_column(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return f"line {line} column {column}"


def _may_nest_deep(text: str, start: int = 0, end: int | None = None) -> bool:
    """Cheap pre-check (C speed): a row cannot nest deeper than it has opening brackets."""
    end = len(text) if end is None else end
    return text.count("[", start, end) + text.count("{", start, end) > MAX_DEPTH


def _depth(value) -> int:
    """Levels of lists / objects in a parsed value (a scalar is 0), counted with a stack, not recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def _too_deep(row: int, field: str | None, depth: int) -> RowProblem:
    return RowProblem(row, field, f"nested {depth} levels deep (limit {MAX_DEPTH}); flatten it (e.g. store the "
                                  "structure as a JSON string) or remove the row")


def _deep_text(row: int, text: str, start: int, found: Nesting | None = None) -> RowProblem:
    """The problem of a row Python's parser could not read for its nesting, found in its text (a field's depth
    is reported, not the row's)."""
    found = found or _nesting(text, start)
    is_object = text.startswith("{", start)
    return _too_deep(row, found.key, found.depth - 1 if is_object else found.depth)


def _checked_row(row: int, data: dict, key: int | None, deep: bool) -> Record | RowProblem:
    """A Record, or a RowProblem naming the field nested deeper than MAX_DEPTH (checked when `deep` says it may)."""
    if deep:
        for field, value in data.items():
            depth = _depth(value)
            if depth > MAX_DEPTH:
                return _too_deep(row, str(field), depth)
    return Record(row, data, key)


def _read_parquet(path: Path, budget: Budget) -> Iterator[Record | RowProblem]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        budget.declare(meta.num_rows, _declared_bytes(meta))     # the footer: refused before a page is decoded
        plain = pq.ParquetFile(path, metadata=meta)
        coded = pq.ParquetFile(path, metadata=meta, read_dictionary=_text_columns(meta.schema))
    except FileRejected:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise FileRejected(f"{path.name} cannot be read as Parquet ({exc}); re-export it") from None
    index = 0
    try:
        with open(path, "rb") as raw:
            for group in range(meta.num_row_groups):
                _check_expansion(raw, coded, meta.row_group(group), group, budget)
                for batch in plain.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
                    budget.add(batch.num_rows, batch.nbytes)
                    for row in batch.to_pylist():
                        index += 1
                        yield Record(index, row)
    except FileRejected:
        raise
    except Exception as exc:
        yield RowProblem(index + 1, None, f"the Parquet data cannot be decoded ({exc}); re-export the file")


def _check_expansion(raw, coded, group_meta, group: int, budget: Budget) -> None:
    """Refuse a row group that would pass the budget once decoded, before it is decoded.

    The footer does not show it: a 1 KB file can repeat one 1 MB dictionary entry a million times. The page
    headers say how many bytes each page decompresses to and how many values are dictionary indices; each index
    expands to at most the longest entry of its dictionary (learnt by reading one row with the text kept
    dictionary-encoded). Only a group that could pass the cap on that bound is counted exactly, in a second,
    dictionary-encoded read that expands nothing."""
    chunks = [_chunk_pages(raw, group_meta.column(i), budget.tick) for i in range(group_meta.num_columns)]
    budget.expect(0, sum(pages for _, pages in chunks))
    if not any(values for values, _ in chunks):
        return
    first = next(coded.iter_batches(batch_size=1, row_groups=[group]), None)
    longest = _leaf_longest(first, len(chunks))
    if budget.fits(sum(values * most + pages for (values, pages), most in zip(chunks, longest))):
        return
    counted = 0
    for batch in coded.iter_batches(batch_size=COUNT_ROWS, row_groups=[group]):
        counted += _decoded_bytes(batch)
        budget.expect(0, counted)


def _leaf_longest(batch, leaves: int) -> list[int]:
    """The longest dictionary entry of each leaf column, in the footer's column order (all the longest of any
    when the batch's leaves cannot be matched to the footer's columns)."""
    found: list[int] = []
    for column in (batch.columns if batch is not None else []):
        _collect_longest(column, found)
    if len(found) != leaves:
        return [max(found, default=0)] * leaves
    return found


def _collect_longest(array, found: list[int]) -> None:
    """Append, leaf by leaf (depth first, as Parquet orders its columns), the longest dictionary entry (0: none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_struct(kind):
        for child in array.flatten():
            _collect_longest(child, found)
    elif _is_list(array):
        _collect_longest(array.flatten(), found)
    elif pa.types.is_dictionary(kind) and _is_text(kind.value_type):
        found.append(pc.max(pc.binary_length(array.dictionary)).as_py() or 0)
    else:
        found.append(0)


# Parquet page headers (Thrift compact protocol), read only for two numbers per page that pyarrow does not expose:
# the bytes it decompresses to and, for data pages, how many of its values are dictionary indices.
PAGE_DATA, PAGE_DATA_V2 = 0, 3
DICTIONARY_ENCODINGS = {2, 8}          # PLAIN_DICTIONARY, RLE_DICTIONARY
HEADER_READS = (256, 1 << 16, 1 << 22)  # a page header is a few dozen bytes, more with statistics: read more if so


def _chunk_pages(raw, chunk, tick) -> tuple[int, int]:
    """(values stored as dictionary indices, bytes its pages decompress to) for one column chunk; when a header
    cannot be read, (every value, the footer's size): the bound then errs on the safe side."""
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page and chunk.dictionary_page_offset \
        else chunk.data_page_offset
    end = start + chunk.total_compressed_size
    pos, seen, coded, pages = start, 0, 0, 0
    try:
        while pos < end and seen < chunk.num_values:
            header, size = _page_header(raw, pos)
            kind, unpacked, packed = header.get(1), header[2], header[3]
            if not (isinstance(packed, int) and isinstance(unpacked, int) and packed >= 0 and unpacked >= 0):
                raise ValueError("page sizes")
            pages += unpacked
            page = header.get(5) if kind == PAGE_DATA else header.get(8) if kind == PAGE_DATA_V2 else None
            if isinstance(page, dict):
                values = page.get(1, 0)
                seen += values
                if page.get(2 if kind == PAGE_DATA else 4) in DICTIONARY_ENCODINGS:
                    coded += values
            pos += size + packed
            tick()
    except (IndexError, KeyError, ValueError, TypeError, RecursionError):
        return chunk.num_values, chunk.total_uncompressed_size
    return coded, pages


def _page_header(raw, pos: int) -> tuple[dict, int]:
    """The page header at pos and its length in bytes (IndexError when it does not end within the file)."""
    for limit in HEADER_READS:
        raw.seek(pos)
        buf = raw.read(limit)
        try:
            return _thrift_struct(buf, 0)
        except IndexError:
            if len(buf) < limit:
                raise
    raise IndexError("page header too long")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _thrift_struct(buf: bytes, pos: int, depth: int = 0) -> tuple[dict, int]:
    """A Thrift compact struct as {field id: value} (nested structs as dicts, binaries and lists skipped)."""
    if depth > 8:
        raise ValueError("nested too deep")
    fields, last = {}, 0
    while True:
        byte = buf[pos]
        pos += 1
        if byte == 0:
            return fields, pos
        kind = byte & 0x0F
        if byte >> 4:
            last += byte >> 4
        else:
            raw_id, pos = _varint(buf, pos)
            last = _zigzag(raw_id)
        fields[last], pos = _thrift_value(buf, pos, kind, depth)


def _thrift_value(buf: bytes, pos: int, kind: int, depth: int):
    if kind in (1, 2):                     # a boolean field carries its value in its type
        return kind == 1, pos
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        value, pos = _varint(buf, pos)
        return _zigzag(value), pos
    if kind == 7:
        return None, pos + 8
    if kind == 8:
        size, pos = _varint(buf, pos)
        return None, pos + size
    if kind in (9, 10):                    # list / set
        head = buf[pos]
        pos += 1
        size, item = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = _thrift_item(buf, pos, item, depth)
        return None, pos
    if kind == 11:                         # map
        size, pos = _varint(buf, pos)
        if size:
            types = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _thrift_item(buf, _thrift_item(buf, pos, types >> 4, depth), types & 0x0F, depth)
        return None, pos
    if kind == 12:
        return _thrift_struct(buf, pos, depth + 1)
    raise ValueError(f"unknown Thrift type {kind}")


def _thrift_item(buf: bytes, pos: int, kind: int, depth: int) -> int:
    """Skip one element of a list, set or map (where a boolean takes a byte of its own)."""
    return pos + 1 if kind in (1, 2) else _thrift_value(buf, pos, kind, depth + 1)[1]


def _declared_bytes(meta) -> int:
    """What the footer says the columns hold decompressed. Each value costs at least 4 bytes once decoded (an
    offset or a dictionary index), which also catches a run-length-encoded column of a billion tiny values."""
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            total += max(chunk.total_uncompressed_size, 4 * chunk.num_values)
    return total


def _text_columns(schema) -> list[str]:
    """Paths of the string / binary leaf columns (the ones Parquet can dictionary-encode; decimals excluded)."""
    columns = (schema.column(i) for i in range(len(schema)))
    return [c.path for c in columns if c.physical_type == "BYTE_ARRAY" and c.logical_type.type != "DECIMAL"]


def _decoded_bytes(batch) -> int:
    """Bytes a record batch holds once every dictionary is expanded, counted without expanding any."""
    return sum(_array_bytes(column) for column in batch.columns)


def _array_bytes(array) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary
        if _is_text(values.type):
            lengths = pc.take(pc.binary_length(values), array.indices)
            return (pc.sum(lengths).as_py() or 0) + array.indices.nbytes
        return _array_bytes(array.dictionary_decode())      # fixed-width values: small whatever the count
    if pa.types.is_struct(kind):
        return sum(_array_bytes(child) for child in array.flatten())
    if _is_list(array):
        return 4 * len(array) + _array_bytes(array.flatten())
    return array.nbytes


def _is_text(kind) -> bool:
    import pyarrow as pa

    return any(test(kind) for test in (pa.types.is_string, pa.types.is_binary, pa.types.is_large_string,
                                       pa.types.is_large_binary))


def _is_list(array) -> bool:
    import pyarrow as pa

    return isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray))    # maps are lists too


def _read_saved(path: Path, budget: Budget) -> Iterator[Record | RowProblem]:
    import datasets

    _count_saved_split(path, budget)        # before datasets maps (and decompresses) the Arrow files
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise FileRejected(f"{path.name} cannot be opened with datasets.load_from_disk ({exc}); save it again "
                           "with Dataset.save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        if not loaded:
            raise FileRejected(f"{path.name} holds no splits; save a dataset with rows")
        loaded = loaded[_saved_split(list(loaded))]
    index = 0
    for batch in loaded.iter(batch_size=BATCH_ROWS):
        keys = list(batch)
        rows = list(zip(*batch.values()))
        budget.add(len(rows))                # bytes were counted from the Arrow files
        for values in rows:
            index += 1
            yield Record(index, dict(zip(keys, values)))


def _saved_split(splits: list[str]) -> str:
    return "train" if "train" in splits else splits[0]


def _count_saved_split(path: Path, budget: Budget) -> None:
    """Rows and decoded bytes of the Arrow files of the split that will be read, one record batch at a time (Arrow
    files may be compressed); files that are not Arrow streams are left to load_from_disk to refuse."""
    import pyarrow as pa

    folder = path
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        if splits:
            folder = path / _saved_split(list(splits))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rows = nbytes = 0
    for file in sorted(folder.rglob("*.arrow")):
        try:
            with pa.memory_map(str(file)) as source:
                for batch in pa.ipc.open_stream(source):
                    rows, nbytes = rows + batch.num_rows, nbytes + _decoded_bytes(batch)
                    budget.expect(rows, nbytes)
        except pa.ArrowException:
            continue


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "saved": _read_saved}
