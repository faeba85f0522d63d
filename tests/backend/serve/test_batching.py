"""The batching scheduler on real tiny models: concurrent requests for different adapters and the base share one
generate call and answer as each would alone; a client that leaves frees its row; stop strings and max_tokens
hold per row; the `openai` client sees the same texts concurrently as one by one."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import openai
import pytest

from backend import models
from backend.serve.engine import Engine
from backend.serve.openai_api import build_api, serve_in_thread
from tests.backend.conftest import finished_job
from tests.backend.serve.test_openai_api import QUESTION

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    """The tiny base with three finished jobs on it, one engine (4 adapters) behind one server."""
    home = tmp_path_factory.mktemp("batching-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORASTUDIO_HOME", str(home))
        (home / "models").mkdir()
        base = models.import_model(tiny_model_dir, name="tiny-llama").name
        # high learning rates so each adapter's greedy answer is its own text
        jobs = [finished_job(base, steps=6, lr=1e-1), finished_job(base, steps=4, lr=1e-1, seed=2),
                finished_job(base, steps=5, lr=1e-1, seed=3)]
        engine = Engine(base, max_adapters=4)
        server, thread, port = serve_in_thread(build_api(engine, None))
        yield SimpleNamespace(home=home, base=base, jobs=jobs, engine=engine, url=f"http://127.0.0.1:{port}/v1")
        server.should_exit = True
        thread.join(10)
        engine.close()


@pytest.fixture
def api(served, monkeypatch):
    monkeypatch.setenv("LORASTUDIO_HOME", str(served.home))
    return served


def ask(engine: Engine, model: str, **options):
    """A prepared greedy chat request (a raw completion with prompt=...)."""
    options = {"temperature": 0, "max_tokens": 12, **options}
    if "prompt" not in options:
        options["messages"] = QUESTION
    return engine.prepare(model, **options)


def run_together(engine: Engine, requests: list, work=None) -> list:
    """Run `work(request)` (engine.complete by default) for each request on its own thread, all queued behind a
    running request first, so the scheduler takes them as one batch once that one's client leaves."""
    work = work or engine.complete
    blocker = engine.stream(engine.prepare(engine.model_name, prompt=PROMPT, temperature=2.0, seed=1,
                                           max_tokens=900))
    next(blocker)                                  # it is generating; the rest waits in the queue
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(work, request) for request in requests]
        deadline = time.monotonic() + 10
        while len(engine.scheduler.waiting) < len(requests):
            assert time.monotonic() < deadline, "the requests were not queued"
            time.sleep(0.005)
        blocker.close()                            # the blocker's client leaves: the queued batch starts
        return [future.result(timeout=60) for future in futures]


def test_a_mixed_batch_answers_as_each_request_alone(api):
    engine = api.engine
    models_asked = [api.base, *api.jobs]
    alone = [engine.complete(ask(engine, model)) for model in models_asked]
    assert len({piece.text for piece in alone}) >= 3     # different answers (two jobs answer as the base): a mix-up shows
    batches = dict(engine.stats()["batches"]["sizes"])

    together = run_together(engine, [ask(engine, model) for model in models_asked])

    assert [piece.text for piece in together] == [piece.text for piece in alone]
    assert [piece.completion_tokens for piece in together] == [piece.completion_tokens for piece in alone]
    sizes = engine.stats()["batches"]["sizes"]
    assert sizes.get(4, 0) == batches.get(4, 0) + 1                 # all four in ONE generate call
    assert all(entry["requests"] >= 2 for entry in engine.stats()["adapters"])


def test_raw_completions_batch_with_chats(api):
    engine = api.engine
    requests = [ask(engine, api.jobs[0], prompt=PROMPT), ask(engine, api.jobs[1]), ask(engine, api.base, prompt=PROMPT)]
    alone = [engine.complete(request).text for request in requests]
    assert [piece.text for piece in run_together(engine, requests)] == alone


def test_stop_strings_and_max_tokens_hold_per_row(api):
    engine = api.engine
    a, b = api.jobs[0], api.jobs[1]
    full = engine.complete(ask(engine, a, max_tokens=20)).text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    together = run_together(engine, [ask(engine, a, max_tokens=20, stop=[stop]), ask(engine, a, max_tokens=3),
                                     ask(engine, b, max_tokens=7), ask(engine, a, max_tokens=20)])
    cut, short, seven, whole = together
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    assert (short.completion_tokens, short.finish_reason) == (3, "length")
    assert short.text == engine.complete(ask(engine, a, max_tokens=3)).text
    assert (seven.completion_tokens, seven.finish_reason) == (7, "length")
    assert whole.text == full


def test_a_client_that_leaves_frees_its_row_and_the_others_finish(api):
    engine = api.engine
    a, b = api.jobs[0], api.jobs[1]
    alone = [engine.complete(ask(engine, model, max_tokens=30)).text for model in (a, b)]
    left = {}

    def leave(request):
        stream = engine.stream(request)
        left["first"] = next(stream)
        stream.close()                             # the client hangs up after its first piece
        left["at"] = time.monotonic()

    def work(request):
        return leave(request) if request.prompt else engine.complete(request)

    started = time.monotonic()
    results = run_together(engine, [ask(engine, a, max_tokens=30), ask(engine, api.base, prompt=PROMPT,
                                                                       max_tokens=900),
                                    ask(engine, b, max_tokens=30)], work=work)
    assert [results[0].text, results[2].text] == alone
    assert left["first"].delta and not left["first"].done
    deadline = time.monotonic() + 5                # the batch ended with its last live row, not 900 tokens later
    while engine.scheduler.running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    aborted = [r for r in engine.stats()["requests"] if r["finish_reason"] == "aborted"]
    assert aborted and aborted[-1]["model"] == api.base
    assert time.monotonic() - started < 20


def test_the_openai_client_gets_the_same_texts_concurrently(api):
    client = openai.OpenAI(base_url=api.url, api_key="unused", max_retries=0, timeout=60)
    asked = [api.base, *api.jobs]

    def chat(model):
        return client.chat.completions.create(model=model, messages=QUESTION, temperature=0,
                                              max_tokens=12).choices[0].message.content

    one_by_one = [chat(model) for model in asked]
    count = api.engine.stats()["batches"]["count"]
    with ThreadPoolExecutor(len(asked)) as pool:
        concurrent = list(pool.map(chat, asked))
    assert concurrent == one_by_one
    # how the HTTP requests fall into batches depends on their arrival; the texts may not
    assert api.engine.stats()["batches"]["count"] - count <= len(asked)


def test_which_requests_may_share_one_generate_call():
    from backend.serve.batching import batch_key
    from backend.serve.chat import GenerationSettings

    def request(temperature=0.0, seeded=False, mixable=True, adapter="job-a", top_p=1.0):
        return SimpleNamespace(settings=GenerationSettings(temperature=temperature, top_p=top_p), seeded=seeded,
                               mixable=mixable, adapter=adapter)

    assert batch_key(request(adapter="job-a")) == batch_key(request(adapter=None)), "greedy rows mix adapters"
    assert batch_key(request(0.7)) == batch_key(request(0.7)) != batch_key(request(0.7, top_p=0.9))
    seeded = request(0.7, seeded=True)
    assert batch_key(seeded) != batch_key(request(0.7, seeded=True)), "a seeded sampled row runs alone"
    assert batch_key(request(mixable=False, adapter="dora")) != batch_key(request()), "DoRA batches apart"
