"""The test suite's own time, from a fresh clone: the budgets of tests/README.md (whole <= 15 min, fast <= 4 min).

    python -m bench suite [--fast-only]

Clones this repository's committed HEAD into a temporary folder and runs there what CI runs
(`CI=true bash .ci/run`: set-up of a new .venv, the test tools, then the whole suite in two pytest-xdist
processes), then the fast tier in the same clone (`./studio.sh test --fast`; its set-up is done by then).
Reports pytest's own time (what the budgets count), the wall time with set-up, and the test counts. Nothing is
timed inside a test: this is the measurement the budgets are checked against.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
BUDGETS_S = {"whole": 15 * 60, "fast": 4 * 60}
# pytest's last line, e.g. "==== 1 failed, 492 passed, 263 warnings in 1218.48s (0:20:18) ====" (no rules with -q)
SUMMARY = re.compile(r"^=* ?(?P<counts>\d+ [a-z]+(?:, \d+ [a-z]+)*) in (?P<seconds>[\d.]+)s(?: \([\d:]+\))? ?=*\s*$",
                     re.M)


def pytest_summary(output: str) -> dict:
    """{"seconds": pytest's time, "passed": n, "failed": n, ...} from the last summary line of a run's output."""
    found = list(SUMMARY.finditer(output))
    if not found:
        raise ValueError("no pytest summary line in the output (the run stopped before pytest finished)")
    last = found[-1]
    counts = {}
    for part in last.group("counts").split(","):
        number, _, kind = part.strip().partition(" ")
        if number.isdigit():
            counts[kind.strip()] = int(number)
    return {"seconds": float(last.group("seconds")), **counts}


def fresh_clone(repo: Path, into: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(repo), str(into)], check=True)
    return into


def timed(command: list[str], cwd: Path, env: dict, timeout: float) -> tuple[float, int, str]:
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return time.monotonic() - started, result.returncode, result.stdout + result.stderr


def main(fast_only: bool = False, repo: Path = ROOT, timeout: float = 3600.0, keep: bool = False) -> str:
    scratch = Path(tempfile.mkdtemp(prefix="lorastudio-suite-"))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST", "LORASTUDIO_"))}
    env["CI"] = "true"
    runs = [("fast", ["bash", "studio.sh", "test", "--fast"])]
    if not fast_only:   # CI's command first: it sets up the clone, as on a new machine
        runs.insert(0, ("whole", ["bash", ".ci/run"]))
    rows = []
    try:
        clone = fresh_clone(repo, scratch / "clone")
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                              text=True).stdout.strip()
        for tier, command in runs:
            print(f"   {tier}: {' '.join(command)} in a fresh clone of {head}", flush=True)
            wall, code, output = timed(command, clone, env, timeout)
            summary = pytest_summary(output)
            if code != 0:
                print(output[-4000:], flush=True)
            rows.append([tier, f"`{' '.join(command)}`", summary.get("passed", 0), summary.get("failed", 0),
                         summary.get("skipped", 0), f"{summary['seconds']:.0f}",
                         f"{summary['seconds'] / 60:.1f} / {BUDGETS_S[tier] / 60:.0f}", f"{wall:.0f}"])
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return (f"Fresh clone of {head}; the first run sets up a new .venv (its wall time includes that).\n\n"
            + markdown_table(["tier", "command", "passed", "failed", "skipped", "pytest s", "min / budget",
                              "wall s"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--fast-only", action="store_true", help="only the fast tier")
    arguments = parser.parse_args()
    print(main(fast_only=arguments.fast_only))
