"""The dataset registry: folders under $LORASTUDIO_HOME/datasets/<id>/.

Each folder holds the normalised rows (JSONL, canonical kind: see formats), report.json (the validation
report of the upload) and meta.json (id, name, format, counts, hash). An upload's id is derived from its
content hash (and column mapping), so uploading the same bytes again reuses the folder. Folders are written
under a temporary name and renamed into place, so a crash never leaves a half-registered dataset.
Demo datasets (demo.DEMO_DATASETS) are registered under their own name.

A dataset saved with a name (meta "named": true) is found by that name wherever an id is accepted (resolve:
job configs, preflight, the harness, the CLI); names are unique among datasets and never shadow a demo name
or an id. Job configs keep what the user gave (the name), run.json pins the resolved id and sha256.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from backend import workspace
from backend.data.demo import DEMO_DATASETS, write_demo
from backend.data.validate import Scan, finish, scan

DATA_FILE = "data.jsonl"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")


class DataError(ValueError):
    """A dataset cannot be used; the message is one sentence saying what, where and how to fix it."""


def _meta_path(dataset_id: str) -> Path:
    return workspace.datasets_dir() / dataset_id / "meta.json"


def is_registered(spec: str) -> bool:
    return ("/" not in spec and os.sep not in spec and not spec.startswith(".")
            and _meta_path(spec).is_file())


def dataset_info(dataset_id: str) -> dict:
    """meta.json of a registered dataset (by id or saved name), with its stored report under "report"."""
    if not is_registered(dataset_id):
        dataset_id = find_by_name(dataset_id) or dataset_id
    if not is_registered(dataset_id):
        raise DataError(f"no registered dataset '{dataset_id}'; upload the file first or check the id")
    folder = workspace.datasets_dir() / dataset_id
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    report = folder / "report.json"
    meta["report"] = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    return meta


def find_by_name(name: str) -> str | None:
    """The id of the dataset saved under this name, or None."""
    name = str(name).strip()
    if not name or "/" in name or os.sep in name:
        return None
    return next((m["id"] for m in list_datasets() if m.get("named") and m.get("name") == name), None)


def registered_id(spec: str) -> str | None:
    """The registered id a spec names (a demo name, an id or a saved name), or None for a file path."""
    spec = str(spec).strip()
    if spec in DEMO_DATASETS or is_registered(spec):
        return spec
    return find_by_name(spec)


def display_name(spec: str) -> str:
    """What to show for a dataset spec: its saved name for an id saved under one, else the spec itself."""
    spec = str(spec)
    if spec.startswith("ds-") and is_registered(spec):
        try:
            meta = json.loads(_meta_path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return spec
        if meta.get("named") and meta.get("name"):
            return meta["name"]
    return spec


def resolve(spec: str) -> tuple[str, Path, dict | None]:
    """(dataset id, path to read, meta or None) for a demo name, a registered id, a saved name or a file path."""
    spec = str(spec)
    if spec in DEMO_DATASETS:
        ensure_demo_datasets([spec])
    dataset_id = spec if is_registered(spec) else None
    path = Path(spec).expanduser()
    if dataset_id is None and not path.exists():
        dataset_id = find_by_name(spec)
    if dataset_id is not None:
        folder = workspace.datasets_dir() / dataset_id
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return dataset_id, folder / meta["data_file"], meta
    if not path.exists() and "/" not in spec and os.sep not in spec and not Path(spec).suffix:
        raise DataError(f"dataset '{spec}' is not a demo name ({', '.join(DEMO_DATASETS)}), a saved dataset name "
                        "or id, or an existing file; check the name (lorastudio data list) or upload the file")
    return path.stem if path.is_file() else path.name, path, None


def check_name(name: str, dataset_id: str | None = None, taken: bool = True) -> str:
    """The cleaned name, or DataError (one sentence) when it is malformed, reserved or (taken=True) held by a
    dataset other than dataset_id."""
    clean = str(name).strip()
    if not NAME_RE.match(clean):
        raise DataError(f"dataset name '{clean}' is not valid; use up to 64 letters, digits, spaces, '.', '_' or "
                        "'-', starting with a letter or digit")
    if clean in DEMO_DATASETS or (clean.startswith("ds-") and clean != dataset_id):
        raise DataError(f"dataset name '{clean}' is reserved (a demo dataset or an id); pick another name")
    owner = find_by_name(clean) if taken else None
    if owner is not None and owner != dataset_id:
        meta = json.loads(_meta_path(owner).read_text(encoding="utf-8"))
        raise DataError(f"dataset name '{clean}' is already used by {owner} ({meta.get('rows', '?')} rows "
                        f"{meta.get('kind') or ''} data); pick another name or delete that dataset first")
    return clean


@contextlib.contextmanager
def _names_lock():
    """One registration at a time, so that two uploads cannot take the same name."""
    root = workspace.datasets_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".names.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
                    format_name: str | None = None, extra_meta: dict | None = None) -> str:
    """Validate and store an uploaded file; returns its id (the same id for the same content).

    With a name, the dataset is found by it everywhere an id is accepted; a name another dataset holds is a
    DataError (one sentence). Saving the same content again under a name names the existing dataset (when it
    has no name yet). extra_meta: more facts for meta.json (a replay set's provenance)."""
    path = Path(path)
    name = None if name is None or not str(name).strip() else str(name).strip()
    if name is not None:
        check_name(name, taken=False)      # before the scan: a malformed name costs no read of a big file
    result = scan(path, column_mapping, format_name)
    report = finish(result)
    if result.kind is None or not result.rows:
        raise DataError(report.first_problem() or f"{path.name} holds no usable rows; fix the errors and upload "
                                                   "again")
    key = report.content_hash + (json.dumps(column_mapping, sort_keys=True) if column_mapping else "") \
        + (format_name or "")
    dataset_id = "ds-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    with _names_lock():
        if name is not None:
            check_name(name, dataset_id)
        if _meta_path(dataset_id).is_file():
            if name is not None:
                _rename(dataset_id, name)
            return dataset_id
        report_dict = report.to_dict()
        report_dict["path"] = path.name
        rows = (canon for number, canon in result.rows if number not in result.log.bad_rows
                or result.log.bad_rows[number] is not None)
        meta = _meta(dataset_id, name or path.name, result, DATA_FILE, False)
        meta["named"] = name is not None
        meta.update(extra_meta or {})
        _write_folder(dataset_id, rows, report_dict, meta)
    return dataset_id


def _rename(dataset_id: str, name: str) -> None:
    meta = json.loads(_meta_path(dataset_id).read_text(encoding="utf-8"))
    if meta.get("named") and meta.get("name") == name:
        return
    if meta.get("named"):
        raise DataError(f"this file is already saved as dataset '{meta['name']}' ({dataset_id}); use that name, "
                        "or delete it and save it again")
    meta["name"], meta["named"] = name, True
    _replace(_meta_path(dataset_id), json.dumps(meta, ensure_ascii=False, indent=1))


def ensure_demo_datasets(names=None) -> list[str]:
    """Register the bundled demo datasets (idempotent; run at first start)."""
    names = list(names or DEMO_DATASETS)
    for name in names:
        folder = workspace.datasets_dir() / name
        data = write_demo(name, folder)          # rewrites only if the generator changed
        meta = folder / "meta.json"
        if meta.is_file() and (folder / "report.json").is_file() and _newest_mtime(data) <= meta.stat().st_mtime:
            continue        # registered, and the data is not newer than its report (a new studio version's demo is)
        result = scan(data, display_name=data.name)
        report = finish(result)
        # meta.json last: a folder counts as registered only once it is complete
        _replace(folder / "report.json", json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
        _replace(folder / "meta.json", json.dumps(_meta(name, name, result, data.name, True), indent=1))
    return names


def _newest_mtime(path: Path) -> float:
    """The newest modification time of a file, or of the files in a folder (a text demo)."""
    if path.is_dir():
        return max((f.stat().st_mtime for f in path.rglob("*") if f.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


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
    """Delete a saved dataset by id or name."""
    found = dataset_id if is_registered(dataset_id) else find_by_name(dataset_id)
    if found is None:
        raise DataError(f"no registered dataset '{dataset_id}'; check the id")
    shutil.rmtree(workspace.datasets_dir() / found)

