"""Presets: ready job configs found by name, for `lorastudio train NAME` and the Train tab.

Two folders: the bundled presets (presets/ in the project, read-only for the app) and the user's
(presets/ in the workspace, written by the Train tab's "Save as preset"). A name resolves BUNDLED FIRST, then
the user's: saving over a bundled name is refused, so a bundled preset is never shadowed and both edges get
the same file for the same name. `names()` lists the bundled ones, then the user's.
"""
from __future__ import annotations

import re
from pathlib import Path

from backend import workspace
from backend.config import JobConfig

NAME_PATTERN = r"[A-Za-z0-9][\w.\-]{0,63}"
SAVED_HEADER = "# saved from the LoRA Studio Train tab\n"


class PresetError(ValueError):
    """A preset problem the user can fix; the message is one sentence."""


def folders() -> list[Path]:
    """Where presets are looked up, in resolution order: bundled, then the user's."""
    return [workspace.PRESETS_DIR, workspace.user_presets_dir()]


def names() -> list[str]:
    """Every preset name: the bundled ones (sorted), then the user's (sorted) that are not bundled names."""
    out: list[str] = []
    for folder in folders():
        out += [p.stem for p in sorted(folder.glob("*.yaml")) if p.stem not in out]
    return out


def find(name: str) -> Path | None:
    """The file of preset `name` (bundled first, then the user's), or None."""
    for folder in folders():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def resolve(spec: str) -> Path:
    """A job config YAML file, or a preset name (with or without .yaml) -> its path (the CLI's CONFIG)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    preset = find(spec.removesuffix(".yaml"))
    if preset is not None:
        return preset
    raise FileNotFoundError(f"config '{spec}' is neither a file nor a preset; presets: {', '.join(sorted(names()))}")


def load(name: str) -> JobConfig:
    """Preset `name` as a JobConfig (defaults filled in); a missing or broken preset raises PresetError."""
    path = find(name)
    if path is None:
        raise PresetError(f"no preset named '{name}'; pick one of {', '.join(names())}")
    config = JobConfig.from_yaml(path)
    if config.load_errors:
        raise PresetError(f"preset {name} has problems: {'; '.join(config.load_errors)}")
    return config


def save(name: str, data: dict) -> Path:
    """Save a (nested) config dict as user preset `name`; returns its path.

    The name is letters, digits, '-', '_' and '.' (up to 64 characters) and may not be a bundled preset's."""
    name = (name or "").strip()
    if not re.fullmatch(NAME_PATTERN, name):
        raise PresetError("preset name: use letters, digits, '-', '_' or '.' (up to 64 characters), e.g. my-run")
    if (workspace.PRESETS_DIR / f"{name}.yaml").is_file():
        raise PresetError(f"'{name}' is a bundled preset; choose another name")
    config = JobConfig.from_dict(data)
    errors = config.validate(cuda_available=False) if config.load_errors else []
    if config.load_errors:
        raise PresetError("; ".join(errors))
    path = workspace.user_presets_dir() / f"{name}.yaml"
    path.write_text(f"{SAVED_HEADER}{config.to_yaml()}", encoding="utf-8")
    return path
