"""Shared fixtures: an isolated workspace per test, the bundled model converted once per session, and tiny
random models built from a config (hidden size 64, 2 layers) that carry the bundled tokenizer."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # never reach for the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two pytest processes on two cores: one compute thread each (and in what they start), or OpenMP threads
    # oversubscribe the cores and a training test runs many times slower
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

BUNDLED = "smollm2-135m-instruct"


def pytest_collection_modifyitems(items):
    """e2e and browser tests are slow too, so the fast tier is one expression: -m "not slow"."""
    for item in items:
        if item.get_closest_marker("e2e") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)


def once_per_run(tmp_path_factory, name: str, build):
    """`build(folder)` once for the whole run: in one pytest process, or under pytest-xdist by the first worker
    to get here while the others wait on a file lock and reuse what it recorded (the pattern pytest-xdist's
    documentation gives for session fixtures). `build` returns something JSON can hold."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent          # the run's folder, above every worker's own
    record = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not record.exists():
            folder = shared / name
            folder.mkdir()
            record.write_text(json.dumps(build(folder)))
        return json.loads(record.read_text())


@pytest.fixture(scope="session")
def bundled_model_dir(tmp_path_factory) -> Path:
    """The bundled SmolLM2, converted from its GGUF once for the whole run."""
    return Path(once_per_run(tmp_path_factory, "bundled-home", _convert_bundled))


def _convert_bundled(home: Path) -> str:
    previous = os.environ.get("LORASTUDIO_HOME")
    os.environ["LORASTUDIO_HOME"] = str(home)
    try:
        from backend import models
        info = models.ensure_bundled_model()
    finally:
        if previous is None:
            os.environ.pop("LORASTUDIO_HOME", None)
        else:
            os.environ["LORASTUDIO_HOME"] = previous
    return str(info.path)


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch, request) -> Path:
    """A fresh $LORASTUDIO_HOME for every test; the converted bundled model is linked in when already built."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORASTUDIO_HOME", str(home))
    (home / "models").mkdir(parents=True)
    if "bundled_model_dir" in request.fixturenames or "smol_tokenizer" in request.fixturenames \
            or "tiny_model_dir" in request.fixturenames:
        source = request.getfixturevalue("bundled_model_dir")
        (home / "models" / BUNDLED).symlink_to(source, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def smol_tokenizer(bundled_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(bundled_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A random 2-layer llama (hidden 64) saved as safetensors with the bundled tokenizer and chat template."""
    from tests.reliability.lab import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), bundled_model_dir)


@pytest.fixture
def tiny_model(tiny_model_dir, workspace) -> str:
    """The tiny model registered in this test's workspace; returns its registry name."""
    from backend import models
    return models.import_model(tiny_model_dir, name="tiny-llama").name


@pytest.fixture(scope="session")
def quickstart_home(tmp_path_factory, bundled_model_dir):
    """A workspace where `lorastudio train quickstart --inline` ran once for the whole run (about a minute;
    under pytest-xdist the workers share it): (home, job_id, the CLI's CompletedProcess). Tests that use it
    point LORASTUDIO_HOME there and only add to it (exports of their own kind, reports)."""
    import subprocess
    import sys

    def train(home: Path):
        (home / "models").mkdir()
        (home / "models" / BUNDLED).symlink_to(bundled_model_dir, target_is_directory=True)
        env = dict(os.environ, LORASTUDIO_HOME=str(home))
        result = subprocess.run([sys.executable, "-m", "cli", "train", "quickstart", "--inline"],
                                capture_output=True, text=True, timeout=900, env=env)
        return [str(home), result.args, result.returncode, result.stdout, result.stderr]

    home, args, returncode, stdout, stderr = once_per_run(tmp_path_factory, "quickstart-home", train)
    job_id = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    return Path(home), job_id, subprocess.CompletedProcess(args, returncode, stdout, stderr)


@pytest.fixture
def quickstart_job(quickstart_home, monkeypatch) -> str:
    """The session's quickstart job id, with this test's LORASTUDIO_HOME pointing at its workspace."""
    home, job_id, result = quickstart_home
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("LORASTUDIO_HOME", str(home))
    return job_id


@pytest.fixture
def quickstart_export(quickstart_job, tmp_path_factory):
    """The quickstart job, held for this test's exports: the studio runs one export per job at a time (a second
    one is refused with a sentence), and two test processes exporting it would otherwise meet that rule."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield quickstart_job
        return
    from filelock import FileLock

    with FileLock(str(tmp_path_factory.getbasetemp().parent / "quickstart-export.lock")):
        yield quickstart_job


@pytest.fixture
def lab(workspace, tiny_model):
    """The test's workspace and tiny model, and the worker / app subprocesses it starts (killed at the end)."""
    from tests.reliability.lab import Lab

    started = Lab(workspace, tiny_model)
    yield started
    started.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port (skipped, with the reason, where it cannot be installed)."""
    from tests.reliability.lab import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    if server.url is None:
        from tests.tools import REDIS_MISSING
        pytest.skip(REDIS_MISSING)
    yield server.url
    server.stop()
