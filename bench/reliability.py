"""Reliability: the whole probe matrix of tests/reliability/probes.py, each probe in a fresh workspace with real
worker / app subprocesses and real kills, and one table of what held (steps lost, attempts, crashes, seconds).

    python -m bench reliability          (about 15 minutes; root adds the PID-1 and full-disk rows)
    python -m bench.reliability [--only NAME ...] [--model MODEL_DIR]

The tests in tests/reliability run one variant of each probe; this runs every kill point in every restart
mode. A probe that times out or raises counts as not held, with the error.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import machine_line, markdown_table
from tests.plugins.studio_faults import SAVE_POINTS as _FILES_BY_POINT

SAVE_POINTS = tuple(_FILES_BY_POINT)   # where inside a checkpoint save the kill lands


def matrix(root_only_ok: bool) -> dict:
    """name -> (probe function name, keyword arguments); the PID-1 and tmpfs rows need root."""
    rows = {
        "group": ("kill_worker_group", {}), "trainer": ("kill_trainer", {}),
        **{f"save-{point}": ("kill_in_save", {"points": (point,)}) for point in SAVE_POINTS},
        **{f"save-{point}-group": ("kill_in_save", {"points": (point,), "restart": "group"}) for point in SAVE_POINTS},
        "app": ("kill_app", {}), "preempt": ("preempt_twice_then_crash", {}),
        "sqlite-2": ("many_workers", {"workers": 2, "count": 4}),
        "sqlite-3": ("many_workers", {"workers": 3, "count": 6}),
        "redis-2": ("many_workers", {"workers": 2, "count": 4, "redis": True}),
        "redis-3": ("many_workers", {"workers": 3, "count": 6, "redis": True}),
        "frozen": ("stale_claim_of_a_live_owner", {}), "hung": ("hung_trainer", {}),
        "export-weights": ("export_killed", {"point": "weights"}), "export-zip": ("export_killed", {"point": "zip"}),
    }
    if root_only_ok:
        rows.update({
            "group-pid1": ("kill_worker_group", {"pid1": True}), "trainer-pid1": ("kill_trainer", {"pid1": True}),
            **{f"save-{point}-pid1": ("kill_in_save", {"points": (point,), "restart": "pid1"})
               for point in SAVE_POINTS},
            "app-pid1": ("kill_app", {"pid1": True}), "disk-full": ("disk_full", {}),
            "namespaces": ("same_host_other_namespace", {}),
        })
    return rows


def _tiny_model(folder: Path) -> Path:
    from backend import models
    from tests.reliability.lab import build_tiny_model

    return build_tiny_model(folder, Path(models.ensure_bundled_model().path))


def run_probe(name: str, function: str, kwargs: dict, root: Path, model_dir: Path, redis_url: str | None):
    """One probe in a fresh workspace under root; returns its Outcome (a crash of the probe is one too)."""
    from backend import models
    from tests.reliability import probes
    from tests.reliability.lab import Lab

    home = root / name
    (home / "models").mkdir(parents=True)
    previous = os.environ.get("LORASTUDIO_HOME")
    os.environ["LORASTUDIO_HOME"] = str(home)
    lab = Lab(home, models.import_model(model_dir, name="tiny-llama").name)
    started = time.monotonic()
    try:
        kwargs = dict(kwargs)
        if kwargs.pop("redis", False):
            if not redis_url:
                return probes.Outcome(name, ["redis-server is not installed"])
            kwargs["redis_url"] = redis_url
        if function == "disk_full":
            kwargs.update(model_dir=model_dir, tmpfs_dir=root / f"{name}-tmpfs")
        if function == "export_killed":
            kwargs["job_id"] = _finished_job(lab)
        outcome = getattr(probes, function)(lab, **kwargs)
    except Exception as error:  # noqa: BLE001 - a probe that breaks did not hold; the table says why
        traceback.print_exc()
        outcome = probes.Outcome(name, [f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"],
                                 seconds=round(time.monotonic() - started, 1))
    finally:
        lab.close()
        if previous is None:
            os.environ.pop("LORASTUDIO_HOME", None)
        else:
            os.environ["LORASTUDIO_HOME"] = previous
    print(outcome, flush=True)
    return outcome


def _finished_job(lab) -> str:
    from backend import jobs
    from backend.jobs import runner

    job_id = lab.submit(enqueue=False, max_steps=2, save_steps=2)
    jobs.update(job_id, status="running")
    done = runner.run_job(job_id)
    if done.status != "completed":
        raise RuntimeError(f"the job to export failed: {done.reason}")
    return job_id


def main(only: tuple = (), model: str | None = None) -> str:
    from tests.reliability.lab import RedisServer, can_unshare

    rows = matrix(can_unshare() and shutil.which("mount") is not None)
    chosen = {name: rows[name] for name in (only or rows) if name in rows}
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="lorastudio-reliability-") as folder:
        root = Path(folder)
        previous = os.environ.get("LORASTUDIO_HOME")
        os.environ["LORASTUDIO_HOME"] = str(root / "setup")
        (root / "setup" / "models").mkdir(parents=True)
        model_dir = Path(model) if model else _tiny_model(root / "tiny-model")
        if previous is None:
            os.environ.pop("LORASTUDIO_HOME", None)
        else:
            os.environ["LORASTUDIO_HOME"] = previous
        redis = RedisServer(root / "redis")
        if any(kwargs.get("redis") for _, kwargs in chosen.values()):
            redis.start()
        try:
            for name, (function, kwargs) in chosen.items():
                outcomes.append((name, run_probe(name, function, kwargs, root, model_dir, redis.url)))
        finally:
            redis.stop()
    return markdown(outcomes)


def markdown(outcomes) -> str:
    """outcomes: (name, Outcome) pairs; the name is what `--only` takes."""
    held = sum(outcome.held for _, outcome in outcomes)
    table = markdown_table(
        ["probe", "name", "held", "steps lost", "attempts", "crashes", "seconds", "what broke / note"],
        [[o.probe, name, "yes" if o.held else "NO", "-" if o.steps_lost is None else o.steps_lost, o.attempts,
          o.crashes, o.seconds, "; ".join(o.problems) or o.note] for name, o in outcomes])
    return (f"{machine_line()}\n\n{held} of {len(outcomes)} probes held. Each runs a 12-step job on a tiny "
            "model (a checkpoint every 3 steps) with real `lorastudio worker` / `python app.py` subprocesses; "
            "'steps lost' is the step reached at the attack minus the step the job resumed from.\n\n" + table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=(), help="probe names (default: all)")
    parser.add_argument("--model", help="a model folder to use instead of the tiny model")
    args = parser.parse_args()
    print(main(tuple(args.only), args.model))
