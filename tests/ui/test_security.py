"""Attacks on the running app over raw HTTP, as a web page or a local attacker would make them (issue 22).

Two real apps (`python -m ui`) on free ports: one without a password, one with `--auth`. Each attack is the
request an attacker sends (a DNS-rebinding page's forged Host, a foreign page's Origin, Gradio's named API,
the queue protocol the page itself uses, a login loop, a download URL of a half-written export), and each test
also sends the legitimate request next to it, so it can tell a refusal from a broken server.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.ui.test_browser import start_app, stop_app


def seed_workspace(home: Path) -> dict:
    """Two finished jobs with run folders, one finished export and two half-written ones."""
    from backend import jobs, workspace
    from backend.config import JobConfig

    made = []
    for _ in range(2):
        job = jobs.create(JobConfig.from_dict({"training": {"max_steps": 4}}))
        jobs.update(job.id, status="completed", step=4, results={"final_train_loss": 0.5})
        made.append(job.id)
    out = workspace.exports_dir() / made[0]
    out.mkdir(parents=True)
    finished = out / f"{made[0]}-adapter.zip"
    finished.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    partial_file = out / f".{made[0]}-q8_0.gguf.partial"
    partial_file.write_bytes(b"GGUF half")
    staging = out / f".{made[0]}-merged-float32.partial"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half-written weights")
    return {"jobs": made, "finished": finished, "partial_file": partial_file,
            "partial_in_folder": staging / "model.safetensors"}


@pytest.fixture(scope="module")
def open_app(tmp_path_factory):
    """An app without a password, its workspace seeded: (base url, seeded facts, home)."""
    home = tmp_path_factory.mktemp("open-app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORASTUDIO_HOME", str(home))
        seeded = seed_workspace(home)
    process, url = start_app(home, "--no-workers")
    yield url.rstrip("/"), seeded, home
    stop_app(process)


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory):
    """An app with --auth admin:s3cret over a seeded workspace."""
    home = tmp_path_factory.mktemp("locked-app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORASTUDIO_HOME", str(home))
        seeded = seed_workspace(home)
    process, url = start_app(home, "--no-workers", "--auth", "admin:s3cret")
    yield url.rstrip("/"), seeded, home
    stop_app(process)


@pytest.fixture
def in_home(monkeypatch):
    def point(home: Path):
        monkeypatch.setenv("LORASTUDIO_HOME", str(home))
    return point


def fn_index(base: str, name: str, client: httpx.Client | None = None) -> int:
    """The queue index of a handler, read from the page's own config (as the browser does)."""
    config = (client or httpx).get(f"{base}/config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == name)


def run_in_queue(base: str, index: int, data: list, session: str, headers: dict | None = None,
                 client: httpx.Client | None = None) -> tuple[int, dict | None]:
    """Call a handler the way the page does (queue/join, then read the event stream). Returns (HTTP status of
    the join, the completed message or None when the join was refused)."""
    http = client or httpx.Client()
    joined = http.post(f"{base}/gradio_api/queue/join", headers=headers or {}, timeout=30,
                       json={"data": data, "fn_index": index, "session_hash": session, "event_data": None,
                             "trigger_id": None})
    if joined.status_code != 200:
        return joined.status_code, None
    with http.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session},
                     headers=headers or {}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return joined.status_code, message
    return joined.status_code, None


def same_origin(base: str) -> dict:
    return {"Origin": base}


# ------------------------------------------------------------------ 1. Host, Origin, named API, confirmation

def test_a_forged_host_is_refused_before_any_handler_runs(open_app, in_home):
    base, seeded, home = open_app
    in_home(home)
    from backend import jobs

    port = base.rsplit(":", 1)[1]
    assert httpx.get(f"{base}/", timeout=30).status_code == 200
    assert httpx.get(f"{base}/", headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200
    page = httpx.get(f"{base}/", headers={"Host": f"rebind.attacker.example:{port}"}, timeout=30)
    assert page.status_code == 403 and "--allowed-hosts rebind.attacker.example" in page.json()["detail"]
    assert seeded["jobs"][0] not in page.text
    index = fn_index(base, "do_delete")
    status, _ = run_in_queue(base, index, [seeded["jobs"][1], None], uuid.uuid4().hex,
                             headers={"Host": f"rebind.attacker.example:{port}",
                                      "Origin": f"http://rebind.attacker.example:{port}"})
    assert status == 403
    assert jobs.get(seeded["jobs"][1]) is not None and (home / "runs" / seeded["jobs"][1]).is_dir()


def test_a_foreign_origin_cannot_start_or_delete_anything(open_app, in_home):
    base, seeded, home = open_app
    in_home(home)
    from backend import jobs

    before = len(jobs.list_jobs())
    start = fn_index(base, "on_start")
    ask, delete = fn_index(base, "ask_delete"), fn_index(base, "do_delete")
    for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                    {"Origin": base.replace("127.0.0.1", "localhost")},       # another origin, same machine
                    {"Sec-Fetch-Site": "cross-site"}):
        session = uuid.uuid4().hex
        assert run_in_queue(base, start, [], session, headers=headers)[0] == 403, headers
        assert run_in_queue(base, ask, [seeded["jobs"][1]], session, headers=headers)[0] == 403, headers
        assert run_in_queue(base, delete, [seeded["jobs"][1], None], session, headers=headers)[0] == 403, headers
    assert len(jobs.list_jobs()) == before and jobs.get(seeded["jobs"][1]) is not None


def test_the_named_api_is_closed_and_lists_nothing(open_app):
    base, seeded, _ = open_app
    for path in ("/gradio_api/call/do_delete", "/gradio_api/call/v2/do_delete", "/gradio_api/run/on_start",
                 "/gradio_api/api/do_delete"):
        answer = httpx.post(f"{base}{path}", json={"data": [seeded["jobs"][1]]}, headers=same_origin(base),
                            timeout=30)
        assert answer.status_code == 404 and "command line" in answer.json()["detail"], path
    info = httpx.get(f"{base}/gradio_api/info", timeout=30).json()
    assert info["named_endpoints"] == {} and info["unnamed_endpoints"] == {}


def test_delete_needs_its_confirmation_step_on_the_server(open_app, in_home):
    """The page's own protocol, same origin: calling the delete handler alone deletes nothing; Delete… and then
    the confirmation, in one session, deletes (the positive control that the call really reached it)."""
    base, seeded, home = open_app
    in_home(home)
    from backend import jobs

    victim = seeded["jobs"][1]
    ask, delete = fn_index(base, "ask_delete"), fn_index(base, "do_delete")
    with httpx.Client() as client:
        status, message = run_in_queue(base, delete, [victim, None], uuid.uuid4().hex, same_origin(base), client)
        assert status == 200 and message is not None
        assert "press Delete… for job" in json.dumps(message["output"], ensure_ascii=False)
        assert jobs.get(victim) is not None and (home / "runs" / victim).is_dir()
        # another session's confirmation does not count either
        run_in_queue(base, ask, [victim], uuid.uuid4().hex, same_origin(base), client)
        run_in_queue(base, delete, [victim, None], uuid.uuid4().hex, same_origin(base), client)
        assert jobs.get(victim) is not None
        session = uuid.uuid4().hex
        run_in_queue(base, ask, [victim], session, same_origin(base), client)
        status, message = run_in_queue(base, delete, [victim, None], session, same_origin(base), client)
    assert status == 200 and f"Job {victim} deleted" in json.dumps(message["output"])
    assert jobs.get(victim) is None and not (home / "runs" / victim).exists()


# ------------------------------------------------------------------ 3. only finished exports are served

def test_half_written_exports_cannot_be_downloaded(open_app):
    base, seeded, _ = open_app
    finished = httpx.get(f"{base}/gradio_api/file={seeded['finished']}", timeout=30)
    assert finished.status_code == 200 and finished.content.startswith(b"PK")
    for key in ("partial_file", "partial_in_folder"):
        path = seeded[key]
        for url in (f"{base}/gradio_api/file={path}", f"{base}/gradio_api/file={str(path).replace('/', '%2F')}",
                    f"{base}/gradio_api/file={path.parent}/../{path.parent.name}/{path.name}"):
            answer = httpx.get(url, timeout=30)
            assert answer.status_code == 404 and b"half" not in answer.content, url


# ------------------------------------------------------------------ 2. nothing before sign-in; throttled sign-in

def test_the_sign_in_page_shows_nothing_of_the_workspace(locked_app):
    base, seeded, home = locked_app
    page = httpx.get(f"{base}/", timeout=30)
    assert page.status_code == 200
    secrets = [*seeded["jobs"], "identity-demo", "smollm2", str(home), "exports", "quickstart"]
    assert [s for s in secrets if s in page.text] == []
    for path in ("/config", "/gradio_api/info", f"/gradio_api/file={seeded['finished']}"):
        answer = httpx.get(f"{base}{path}", timeout=30)
        assert answer.status_code in (401, 403) and not any(s in answer.text for s in seeded["jobs"]), path
    with httpx.Client() as client:   # signed in, the same page does carry the workspace (the check can fail)
        assert client.post(f"{base}/login", data={"username": "admin", "password": "s3cret"}).status_code == 200
        assert seeded["jobs"][0] in client.get(f"{base}/config", timeout=30).text


def test_a_password_guessing_loop_is_locked_out(locked_app):
    base, _, _ = locked_app
    codes = []
    started = time.monotonic()
    with httpx.Client() as client:
        for attempt in range(50):
            codes.append(client.post(f"{base}/login", data={"username": "admin", "password": f"guess{attempt}"},
                                     timeout=30).status_code)
        # five guesses, then refusals; a guess that lands after a lockout ran out doubles the next lockout
        assert codes[:5] == [400] * 5 and codes[5] == 429 and codes.count(400) <= 8, codes
        locked = client.post(f"{base}/login", data={"username": "admin", "password": "s3cret"})
        assert locked.status_code == 429 and "Too many failed sign-ins" in locked.json()["detail"]
        time.sleep(float(locked.headers["retry-after"]) + 0.2)
        assert client.post(f"{base}/login", data={"username": "admin", "password": "s3cret"}).status_code == 200
    assert time.monotonic() - started < 60


# ------------------------------------------------------------------ 5. many open pages
def test_many_open_pages_are_told_to_refresh_less_often(open_app):
    """Each page's refresh runs through Gradio's queue (about 12 ms of CPU even when nothing changed), so the
    app spreads a budget of MAX_REFRESHES_PER_S over the open pages: the ninth page at once gets a longer
    interval on its timer, as the browser's timer takes it."""
    from ui.jobs_tab import MAX_REFRESHES_PER_S, REFRESH_S

    base, seeded, _ = open_app
    config = httpx.get(f"{base}/config", timeout=30).json()
    tick = next(d for d in config["dependencies"] if d.get("api_name") == "tick")
    timer = next(c["id"] for c in config["components"] if c.get("type") == "timer")
    at = tick["outputs"].index(timer)
    data = [seeded["jobs"][0]] + [None] * (len(tick["inputs"]) - 1)
    intervals = []
    with httpx.Client() as client:
        for _ in range(int(MAX_REFRESHES_PER_S * REFRESH_S) + 1):
            status, done = run_in_queue(base, tick["id"], data, f"page-{uuid.uuid4().hex[:8]}",
                                        same_origin(base), client)
            assert status == 200 and done and done["success"], done
            intervals.append(done["output"]["data"][at].get("value"))
    assert intervals[0] == REFRESH_S, "a page's first refresh sets its timer"
    assert intervals[-1] > REFRESH_S, intervals
