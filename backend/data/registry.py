"""The dataset registry: folders under $LORASTUDIO_HOME/datasets/<id>/.

Each folder holds the normalised rows (JSONL, canonical kind: see formats), report.json (the validation
report of the upload) and meta.json (id, name, format, counts, hash). An upload's id is derived from its
content hash (and column mapping), so uploading the same bytes again reuses the folder. Folders are written
under a temporary name and renamed into place, so a crash never leaves a half-registered dataset.
Demo datasets (demo.DEMO_DATASETS) are registered under their own name.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from backend import workspace
from backend.data.demo import DEMO_DATASETS, write_demo
from backend.data.validate import Scan, finish, scan

DATA_FILE = "data.jsonl"


class DataError(ValueError):
    """A dataset cannot be used; the message is one sentence saying what, where and how to fix it."""


def _meta_path(dataset_id: str) -> Path:
    return workspace.datasets_dir() / dataset_id / "meta.json"


def is_registered(spec: str) -> bool:
    return ("/" not in spec and os.sep not in spec and not spec.startswith(".")
            and _meta_path(spec).is_file())


def dataset_info(dataset_id: str) -> dict:
    """meta.json of a registered dataset, with its stored report under "report"."""
    if not is_registered(dataset_id):
        raise DataError(f"no registered dataset '{dataset_id}'; upload the file first or check the id")
    folder = workspace.datasets_dir() / dataset_id
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    report = folder / "report.json"
    meta["report"] = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    return meta


def resolve(spec: str) -> tuple[str, Path, dict | None]:
    """(dataset id, path to read, meta or None) for a demo name, a registered id or a file path."""
    spec = str(spec)
    if spec in DEMO_DATASETS:
        ensure_demo_datasets([spec])
    if is_registered(spec):
        folder = workspace.datasets_dir() / spec
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return spec, folder / meta["data_file"], meta
    path = Path(spec).expanduser()
    if not path.exists() and "/" not in spec and os.sep not in spec and not Path(spec).suffix:
        raise DataError(f"dataset '{spec}' is not a demo name ({', '.join(DEMO_DATASETS)}), a registered dataset "
                        "id or an existing file; check the name or upload the file")
    return path.stem if path.is_file() else path.name, path, None


def _write_folder(dataset_id: str, rows, report_dict: dict, meta: dict, data_file: str = DATA_FILE) -> None:
    root = workspace.datasets_dir()
    tmp = root / f".tmp-{dataset_id}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir(parents=True)
    try:
        if rows is not None:
            with open(tmp / data_file, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "report.json").write_text(json.dumps(report_dict, ensure_ascii=False, indent=1), encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        target = root / dataset_id
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _meta(dataset_id: str, name: str, result: Scan, data_file: str, demo: bool) -> dict:
    report = result.report
    return {"id": dataset_id, "name": name, "demo": demo, "data_file": data_file, "format": report.format,
            "kind": report.kind, "rows": report.rows, "usable_rows": report.usable_rows,
            "invalid_rows": len(result.log.bad_rows), "stages": {k: v.usable for k, v in report.stages.items()},
            "content_hash": report.content_hash, "file_size": report.file_size, "created_at": time.time()}


def register_upload(path: str | Path, name: str | None = None, column_mapping: dict | None = None,
                    format_name: str | None = None) -> str:
    """Validate and store an uploaded file; returns its id (the same id for the same content)."""
    path = Path(path)
    result = scan(path, column_mapping, format_name)
    report = finish(result)
    if result.kind is None or not result.rows:
        raise DataError(report.first_problem() or f"{path.name} holds no usable rows; fix the errors and upload "
                                                   "again")
    key = report.content_hash + (json.dumps(column_mapping, sort_keys=True) if column_mapping else "") \
        + (format_name or "")
    dataset_id = "ds-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    if _meta_path(dataset_id).is_file():
        return dataset_id
    report_dict = report.to_dict()
    report_dict["path"] = path.name
    rows = (canon for number, canon in result.rows if number not in result.log.bad_rows
            or result.log.bad_rows[number] is not None)
    _write_folder(dataset_id, rows, report_dict, _meta(dataset_id, name or path.name, result, DATA_FILE, False))
    return dataset_id


def ensure_demo_datasets(names=None) -> list[str]:
    """Register the bundled demo datasets (idempotent; run at first start)."""
    names = list(names or DEMO_DATASETS)
    for name in names:
        folder = workspace.datasets_dir() / name
        data = write_demo(name, folder)          # rewrites only if the generator changed
        if (folder / "meta.json").is_file() and (folder / "report.json").is_file():
            continue
        result = scan(data, display_name=data.name)
        report = finish(result)
        # meta.json last: a folder counts as registered only once it is complete
        _replace(folder / "report.json", json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
        _replace(folder / "meta.json", json.dumps(_meta(name, name, result, data.name, True), indent=1))
    return names


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def list_datasets() -> list[dict]:
    """Registered datasets (demos first, then newest first), each its meta.json."""
    items = []
    for meta_file in workspace.datasets_dir().glob("*/meta.json"):
        try:
            items.append(json.loads(meta_file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue     # a folder being written or damaged: not listed
    return sorted(items, key=lambda m: (not m.get("demo"), -m.get("created_at", 0)))


def delete_dataset(dataset_id: str) -> None:
    if not is_registered(dataset_id):
        raise DataError(f"no registered dataset '{dataset_id}'; check the id")
    shutil.rmtree(workspace.datasets_dir() / dataset_id)

