"""The OpenAI-compatible API, driven by the real `openai` client against uvicorn on a free port: one tiny base
with real trained adapters (two jobs on it, one on another base), answers equal to the playground's, streaming,
the adapter LRU, every refusal as the client's own exception, the API key, and the CLI's refusal to listen on
every interface without one."""
from __future__ import annotations

import shutil
import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from backend import jobs, models
from backend.config import JobConfig
from backend.jobs.checkpoints import COMPLETE_MARKER
from backend.models import adapters
from backend.serve.chat import GenerationSettings, answer
from backend.serve.engine import Engine
from backend.serve.openai_api import build_api, serve_in_thread
from tests.backend.conftest import finished_job
from tests.conftest import BUNDLED

QUESTION = [{"role": "user", "content": "Who are you?"}]
GREEDY = {"temperature": 0, "max_tokens": 12}
KEY = "test-key-123"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, bundled_model_dir):
    """One workspace for the module: the tiny base with two finished jobs, a job on a second base, a running job
    with a complete checkpoint and one without; one engine (2 adapters at most) behind two servers, one of
    them keyed."""
    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORASTUDIO_HOME", str(home))
        (home / "models").mkdir()
        (home / "models" / BUNDLED).symlink_to(bundled_model_dir, target_is_directory=True)
        base = models.import_model(tiny_model_dir, name="tiny-llama").name
        # job A trains hard enough that its greedy answer is text: the tiny base's is blank lines, stripped to ''
        job_a = finished_job(base, steps=6, lr=1e-1)
        job_b = finished_job(base, seed=2)
        other_dir = shutil.copytree(tiny_model_dir, home / "other-base")
        other_job = finished_job(models.import_model(other_dir, name="tiny-other").name, steps=2)

        # a job still training: one has written a complete checkpoint (job A's adapter weights: a real PEFT
        # folder), the other nothing yet
        config = JobConfig.from_dict({"model": base, "dataset": "identity-demo"})
        with_checkpoint = jobs.create(config, status="running").id
        checkpoint = jobs.get(with_checkpoint).run_dir / "checkpoints" / "checkpoint-2"
        shutil.copytree(jobs.get(job_a).run_dir / "adapter", checkpoint)
        (checkpoint / COMPLETE_MARKER).write_text("")
        no_checkpoint = jobs.create(config, status="running").id

        engine = Engine(base, max_adapters=2)
        open_server, open_thread, port = serve_in_thread(build_api(engine, None))
        keyed_server, keyed_thread, keyed_port = serve_in_thread(build_api(engine, KEY))
        yield SimpleNamespace(home=home, base=base, a=job_a, b=job_b, other=other_job, engine=engine,
                              with_checkpoint=with_checkpoint, no_checkpoint=no_checkpoint,
                              url=f"http://127.0.0.1:{port}/v1", keyed_url=f"http://127.0.0.1:{keyed_port}/v1")
        for server, thread in ((open_server, open_thread), (keyed_server, keyed_thread)):
            server.should_exit = True
            thread.join(10)


@pytest.fixture
def api(served, monkeypatch):
    """The module's workspace for this test (the autouse `workspace` fixture points elsewhere) and a client."""
    monkeypatch.setenv("LORASTUDIO_HOME", str(served.home))
    served.client = openai.OpenAI(base_url=served.url, api_key="unused", max_retries=0, timeout=60)
    return served


def playground_answer(job_id: str, max_new_tokens: int = 12) -> str:
    """What the playground's adapter column answers (greedy), on a model loaded apart from the server's."""
    source = adapters.adapter_source(job_id)
    model = adapters.load_with_adapters([source])
    return answer(model, adapters.load_tokenizer(source), QUESTION,
                  settings=GenerationSettings(max_new_tokens=max_new_tokens))


def chat(api, model: str, **options):
    return api.client.chat.completions.create(model=model, messages=QUESTION, **{**GREEDY, **options})


def test_models_lists_the_base_and_the_finished_jobs_on_it(api):
    listed = api.client.models.list().data
    assert [m.id for m in listed] == [api.base, api.a, api.b]      # not the other base's job, not running jobs
    assert listed[1].owned_by == "lorastudio"


def test_an_adapter_answers_as_in_the_playground_streamed_or_not(api):
    expected = playground_answer(api.a)
    assert expected.strip()
    result = chat(api, api.a)
    assert result.choices[0].message.content == expected and result.object == "chat.completion"
    assert result.usage.completion_tokens > 0 and result.usage.prompt_tokens > 5
    assert chat(api, f"{api.base}:{api.a}").choices[0].message.content == expected     # base:job names it too

    chunks = list(chat(api, api.a, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == result.usage.completion_tokens


def test_sse_events_end_with_done(api):
    body = {"model": api.a, "messages": QUESTION, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{api.url}/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_the_base_is_served_untouched_beside_the_adapters(api):
    from transformers import AutoModelForCausalLM

    untouched = AutoModelForCausalLM.from_pretrained(models.resolve(api.base).path)
    expected = answer(untouched, models.load_tokenizer(api.base), QUESTION, max_new_tokens=12)
    assert chat(api, api.a).choices[0].message.content != expected      # the adapter is on for its job ...
    assert chat(api, api.base).choices[0].message.content == expected   # ... and off for the base


def test_stop_strings_cut_the_answer(api):
    full = chat(api, api.a).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = chat(api, api.a, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(api, api.a, stop=stop, stream=True))
    assert streamed == cut.choices[0].message.content


def test_raw_completions_stream_the_same_text(api):
    whole = api.client.completions.create(model=api.a, prompt="The capital of France is", **GREEDY)
    assert whole.object == "text_completion" and whole.choices[0].text
    chunks = api.client.completions.create(model=api.a, prompt="The capital of France is", stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text


def test_adapters_load_once_and_the_least_recently_used_is_evicted(api):
    engine = api.engine
    chat(api, api.a, max_tokens=2)
    chat(api, api.b, max_tokens=2)
    assert list(engine.loaded) == [api.a, api.b]
    loads_a = engine.load_counts[api.a]
    chat(api, api.a, max_tokens=2)                       # served from the LRU: no second load
    assert engine.load_counts[api.a] == loads_a and list(engine.loaded) == [api.b, api.a]

    checkpoint = f"{api.with_checkpoint}@checkpoint-2"
    chat(api, checkpoint, max_tokens=2)                  # a third adapter: B, the least recently used, goes
    assert list(engine.loaded) == [api.a, checkpoint]
    assert set(engine.peft.peft_config) == {api.a, checkpoint}
    loads_b = engine.load_counts[api.b]
    chat(api, api.b, max_tokens=2)
    assert engine.load_counts[api.b] == loads_b + 1

    stats = engine.stats()
    assert all(a["load_ms"] > 0 and a["weight_bytes"] > 0 for a in stats["adapters"])
    assert stats["requests"][-1]["model"] == api.b and stats["requests"][-1]["completion_tokens"] == 2


def test_a_running_jobs_checkpoint_is_served_by_its_name(api):
    # that checkpoint holds job A's adapter weights, so it answers as job A
    assert chat(api, f"{api.with_checkpoint}@checkpoint-2").choices[0].message.content == \
        chat(api, api.a).choices[0].message.content


@pytest.mark.parametrize("case, error, sentence", [
    ("unknown model", openai.NotFoundError, "does not exist"),
    ("other base prefix", openai.NotFoundError, "names the base 'elsewhere'"),
    ("other base", openai.BadRequestError, "was trained on base 'tiny-other'"),
    ("context too long", openai.BadRequestError, "context is 1024 tokens"),
    ("bad temperature", openai.BadRequestError, "temperature must be from 0.0 to 2.0, not 3.0"),
    ("bad max_tokens", openai.BadRequestError, "max_tokens must be from 1 to 4096, not 0"),
    ("bad stop", openai.BadRequestError, "stop takes at most 4 non-empty strings"),
    ("training, no checkpoint", openai.BadRequestError, "has saved no adapter yet"),
    ("training, checkpoint", openai.BadRequestError, "@checkpoint-2' to use its newest complete checkpoint"),
    ("missing checkpoint", openai.NotFoundError, "no complete checkpoint named 'checkpoint-9'"),
])
def test_refusals_are_the_clients_exceptions_with_one_sentence(api, case, error, sentence):
    model, options = {
        "unknown model": ("no-such-model", {}),
        "other base prefix": (f"elsewhere:{api.a}", {}),
        "other base": (api.other, {}),
        "context too long": (api.a, {"max_tokens": 1020}),
        "bad temperature": (api.a, {"temperature": 3.0}),
        "bad max_tokens": (api.a, {"max_tokens": 0}),
        "bad stop": (api.a, {"stop": ["a", "b", "c", "d", "e"]}),
        "training, no checkpoint": (api.no_checkpoint, {}),
        "training, checkpoint": (api.with_checkpoint, {}),
        "missing checkpoint": (f"{api.with_checkpoint}@checkpoint-9", {}),
    }[case]
    for stream in (False, True):
        with pytest.raises(error) as raised:
            chat(api, model, stream=stream, **options)
        body = raised.value.body
        assert sentence in body["message"] and body["message"].count(". ") == 0, body["message"]
        assert body["type"] and raised.value.status_code in (400, 404)
    assert chat(api, api.base, max_tokens=2).choices[0].message.content is not None    # still serving


def test_malformed_requests_are_400_in_openais_shape(api):
    response = httpx.post(f"{api.url}/chat/completions", json={"model": api.a, "messages": "hi"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    response = httpx.get(f"{api.url}/nothing-here", timeout=30)
    assert response.status_code == 404 and "error" in response.json()


def test_a_key_is_required_when_one_is_set(api):
    without = openai.OpenAI(base_url=api.keyed_url, api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError, match="a valid API key is required"):
        without.models.list()
    keyed = openai.OpenAI(base_url=api.keyed_url, api_key=KEY, max_retries=0, timeout=30)
    assert [m.id for m in keyed.models.list().data][0] == api.base


def test_the_cli_refuses_to_listen_beyond_this_machine_without_a_key(capsys, monkeypatch):
    from cli import main

    monkeypatch.delenv("LORASTUDIO_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "needs --api-key" in capsys.readouterr().err


def test_a_client_that_leaves_mid_stream_frees_the_engine(api):
    body = {"model": api.a, "messages": QUESTION, "stream": True, "temperature": 0, "max_tokens": 400}
    with httpx.stream("POST", f"{api.url}/chat/completions", json=body, timeout=60) as response:
        next(response.iter_lines())                   # the first event, then the client hangs up
    started = time.monotonic()
    assert chat(api, api.base, max_tokens=2).choices[0].finish_reason == "length"
    assert time.monotonic() - started < 10            # the left stream stopped generating and let go of the lock
    assert api.engine.stats()["requests"][-2]["finish_reason"] == "aborted"


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tools_and_an_earlier_call_reach_the_chat_template(api):
    """The real client sends tools, an assistant's call (arguments as a JSON string) and the tool's result; the
    engine renders them through the adapter's template, as training does."""
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'}]
    result = api.client.chat.completions.create(model=api.a, messages=messages, tools=[WEATHER], **GREEDY)
    assert result.choices[0].finish_reason in ("stop", "length", "tool_calls")
    prepared = api.engine.prepare(api.a, messages=[{**m} for m in (messages[0],)], tools=[WEATHER], max_tokens=4)
    prompt = prepared.tokenizer.decode(prepared.input_ids)
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt
    with pytest.raises(openai.BadRequestError) as raised:
        api.client.chat.completions.create(model=api.a, messages=QUESTION, tools=[{"type": "function"}], **GREEDY)
    assert raised.value.body["message"].startswith("tools[0]: the tool schema has no function name")
