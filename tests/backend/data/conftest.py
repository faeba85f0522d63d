"""Fixtures for the datasets tests: a private workspace, file writers, and the SmolLM2 tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def lorastudio_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LORASTUDIO_HOME", str(home))
    monkeypatch.delenv("LORASTUDIO_DATA_DIRS", raising=False)
    monkeypatch.delenv("LORASTUDIO_MAX_UPLOAD_MB", raising=False)
    monkeypatch.delenv("LORASTUDIO_MAX_ROW_MB", raising=False)
    return home


@pytest.fixture
def write_jsonl(tmp_path):
    def write(rows, name="data.jsonl"):
        path = tmp_path / name
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
        return path
    return write


@pytest.fixture(scope="session")
def tokenizer(smol_tokenizer):
    """The bundled SmolLM2 tokenizer (ChatML template), shared with the rest of the suite."""
    return smol_tokenizer
