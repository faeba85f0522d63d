"""The API's Host check (DNS rebinding): a web page whose name an attacker rebinds to 127.0.0.1 reaches the
loopback API as its own origin, so a request naming a host that is not this server's is refused before any
handler runs, with OpenAI's error shape; the user's --allowed-hosts names pass."""
from __future__ import annotations

from starlette.testclient import TestClient

from backend.hosts import allowed_hosts, parse_allowed_hosts
from backend.serve.engine import Engine
from backend.serve.openai_api import build_api


def test_a_rebound_host_is_refused_and_this_servers_names_answer(tiny_model):
    engine = Engine(tiny_model)
    loopback = TestClient(build_api(engine, None), base_url="http://127.0.0.1:8000")
    assert loopback.get("/v1/models").json()["data"][0]["id"] == tiny_model
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert loopback.get("/v1/models", headers={"Host": host}).status_code == 200, host

    refused = loopback.post("/v1/chat/completions", headers={"Host": "rebind.attacker.example:8000"},
                            json={"model": tiny_model, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "host_not_allowed" and "--allowed-hosts rebind.attacker.example" in error["message"]
    assert engine.requests == type(engine.requests)(maxlen=engine.requests.maxlen), "no handler ran"

    behind_proxy = TestClient(build_api(engine, None, allowed_hosts("127.0.0.1") | parse_allowed_hosts("llm.corp")),
                              base_url="http://llm.corp")
    assert behind_proxy.get("/v1/models").status_code == 200
