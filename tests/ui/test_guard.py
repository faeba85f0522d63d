"""The front door's policy as plain functions (the attacks over real HTTP are in test_security.py)."""
from __future__ import annotations

from backend import export, workspace as studio_workspace
from ui import guard


def test_host_names_parse_with_ports_brackets_and_case():
    assert guard.host_name("127.0.0.1:7860") == "127.0.0.1"
    assert guard.host_name("[::1]:7860") == "::1"
    assert guard.host_name("LocalHost.:7860") == "localhost"
    assert guard.host_name("user@studio.example") == "studio.example"


def test_a_loopback_bind_allows_loopback_names_only():
    allowed = guard.allowed_hosts("127.0.0.1")
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "127.0.0.2", "app.localhost:7860"):
        assert guard.host_allowed(host, allowed), host
    for host in ("attacker.example:7860", "localhost.attacker.example", "", "10.0.0.5:7860"):
        assert not guard.host_allowed(host, allowed), host
    assert guard.host_allowed("studio.corp:443", allowed | guard.parse_allowed_hosts("studio.corp, other"))
    assert guard.host_allowed("anything", allowed | guard.parse_allowed_hosts("*"))


def test_a_wildcard_bind_allows_this_machine_but_not_foreign_names():
    allowed = guard.allowed_hosts("0.0.0.0")
    assert guard.machine_names() <= allowed
    assert not guard.host_allowed("rebind.attacker.example", allowed)


def test_origins_must_be_the_studio_itself_or_trusted():
    host = {"host": "127.0.0.1:7860"}
    assert guard.origin_problem("POST", {**host, "origin": "http://127.0.0.1:7860"}) is None
    assert guard.origin_problem("POST", host) is None                          # curl, the CLI: no Origin
    assert guard.origin_problem("POST", {**host, "sec-fetch-site": "same-origin"}) is None
    assert "cross-origin" in guard.origin_problem("POST", {**host, "origin": "http://evil.example"})
    assert "cross-origin" in guard.origin_problem("GET", {**host, "origin": "http://127.0.0.1:3000"})
    assert "Origin: null" in guard.origin_problem("POST", {**host, "origin": "null"})
    assert "cross-site" in guard.origin_problem("POST", {**host, "sec-fetch-site": "cross-site"})
    assert "cross-site" in guard.origin_problem("POST", {**host, "sec-fetch-site": "same-site"})
    assert guard.origin_problem("GET", {**host, "sec-fetch-site": "cross-site"}) is None   # a link to the app
    assert guard.origin_problem("POST", {**host, "origin": "https://studio.corp"}, frozenset({"studio.corp"})) is None


def test_file_urls_are_recognised_and_decoded():
    assert guard.file_path_of("/gradio_api/file=/x/y%20z.zip") == "/x/y z.zip"
    assert guard.file_path_of("/gradio_api/queue/join") is None


def test_sign_in_lockout_doubles_and_resets_on_success():
    now = [0.0]
    throttle = guard.LoginThrottle(attempts=3, lockout_s=2.0, clock=lambda: now[0])
    for _ in range(2):
        throttle.failed("1.2.3.4")
    assert throttle.wait_s("1.2.3.4") == 0
    throttle.failed("1.2.3.4")
    assert throttle.wait_s("1.2.3.4") == 2.0 and throttle.wait_s("5.6.7.8") == 0
    now[0] = 2.5
    throttle.failed("1.2.3.4")
    assert throttle.wait_s("1.2.3.4") == 4.0
    throttle.succeeded("1.2.3.4")
    assert throttle.wait_s("1.2.3.4") == 0
    for _ in range(40):
        throttle.failed("9.9.9.9")
    assert throttle.wait_s("9.9.9.9") == guard.LOCKOUT_CAP_S


def test_only_finished_exports_count_as_downloads():
    folder = studio_workspace.exports_dir() / "job-1"
    (folder / ".job-1-merged.partial").mkdir(parents=True)
    (folder / "job-1-merged").mkdir()
    files = {"job-1-adapter.zip": True, "job-1-q8_0.gguf": True, ".job-1-f16.gguf.partial": False,
             ".job-1-adapter.zip.partial": False, "job-1-merged/model.safetensors": False,
             ".job-1-merged.partial/model.safetensors": False, "notes.txt": False,
             "job-1-compare-20261203.csv": True}
    for name in files:
        (folder / name).write_bytes(b"x")
    assert {name: export.is_download(folder / name) for name in files} == files
    assert not export.is_download(studio_workspace.exports_dir() / "stray.zip")
