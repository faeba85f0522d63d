"""Raw text for continued pretraining: .txt / .md files and folders of data files, read as `text` rows.

A .txt or .md file is ONE document (one row {"text": ...}); documents are never split at blank lines, because the
trainer packs them end to end with EOS between them anyway. A folder (not one written by datasets.save_to_disk)
is read file by file in path order, recursively, with one Budget for the whole folder: .txt / .md files give one
row each, .jsonl / .json / .csv / .parquet files one row per record (through the readers in backend.data.readers).
Hidden files and files of other extensions are not read. Every row of a folder carries "source" (the file, and the
row inside it), so a problem found later names the file; a file that cannot be read at all (empty, binary, not
UTF-8) is one whole-dataset error naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from backend.data import readers
from backend.data.readers import Budget, FileRejected, Record, RowProblem

TEXT_SUFFIXES = (".txt", ".md")


def folder_files(folder: Path) -> list[Path]:
    """The data files a folder dataset reads, in path order (hidden files and folders left out)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in readers.TEXT_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_text(path: Path, budget: Budget) -> Iterator[Record | RowProblem]:
    """One document: the whole file, decoded as UTF-8 (a BOM dropped)."""
    readers._check_utf8(path)
    size = path.stat().st_size
    budget.add(1, size)
    yield Record(1, {"text": path.read_text(encoding="utf-8-sig")})


def read_folder(folder: Path, budget: Budget) -> Iterator[Record | RowProblem]:
    """Every data file of the folder as rows numbered across the folder, each with its source."""
    number = 0
    for path in folder_files(folder):
        relative = path.relative_to(folder).as_posix()
        try:
            _, kind, _ = readers.inspect_file(path)
            reader = read_text if kind == "text" else readers.READERS[kind]
            for item in reader(path, budget):
                number += 1
                where = relative if kind == "text" else f"{relative} row {item.row}"
                if isinstance(item, RowProblem):
                    yield RowProblem(number, item.field, f"{where}: {item.message}")
                else:
                    yield Record(number, {**item.data, "source": where}, item.key)
        except FileRejected as exc:
            if str(exc).startswith(budget.name):
                raise                       # a cap of the whole folder passed: the check stops here
            # one unreadable file: a whole-dataset error naming it (row None), the other files are still read
            message = str(exc)
            yield RowProblem(None, None, message if message.startswith(relative) else
                             message.replace(path.name, relative, 1))


def check_folder(folder: Path, name: str) -> None:
    """A folder that is not a saved dataset must hold data files; FileRejected otherwise."""
    if not folder_files(folder):
        raise FileRejected(f"{name} is a folder with no .txt, .md, .jsonl, .json, .csv or .parquet files (and not "
                           "one written by datasets.save_to_disk); put the data files in it or point at a file")
