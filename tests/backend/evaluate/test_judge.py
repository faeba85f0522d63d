"""The LLM judge: reading verdicts, the both-orders arithmetic and the Wilson interval on known numbers, the one
sentence for an endpoint that cannot be used, and one real run against a real OpenAI-compatible server nobody
on the team wrote: `transformers serve` (part of transformers; its serving needs fastapi, uvicorn, pydantic and
openai, which the studio installs anyway) serving the bundled SmolLM2 on CPU, offline."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from backend.evaluate import judge
from backend.evaluate.common import EvalError, Progress, RowResult
from backend.evaluate.judge import JudgeSettings, NotJudged, Verdict, combine, parse_verdict, wilson_interval

# ------------------------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize("reply, winner, reason", [
    ('{"winner": "A", "reason": "A gives the right total."}', "A", "A gives the right total."),
    ('```json\n{"winner": "B", "reason": "B follows the instruction."}\n```', "B", "B follows the instruction."),
    ('Sure! My verdict: {"winner":"tie","reason":"Both are fine."} Hope that helps.', "tie", "Both are fine."),
    ('{"Winner": "Answer B", "Explanation": "more complete"}', "B", "more complete"),
    ('{"winner": "a", "reason": "lower-case letter"}', "A", "lower-case letter"),
    ('{"winner": "A", "reason": "Answer A is corr', "A", "Answer A is corr"),           # cut off by max_tokens
    ('Winner: B\nReason: it is right.', "B", "it is right."),
    ('The verdict is a tie because both are wrong.', "tie", None),
    ('Answer A is wrong. Answer B is clearly better since it gives 4.', "B", None),
    ('Answer B is not better; Answer A is more accurate.', "A", None),
    ('After careful thought: [[C]]', "tie", None),
    ('[[A]]', "A", None),
    ('I prefer Answer B.', "B", None),
    ('Both answers are equally good.', "tie", None),
])
def test_parser_reads_json_fenced_truncated_and_prose_wrapped_verdicts(reply, winner, reason):
    verdict = parse_verdict(reply)
    assert verdict is not None and verdict.winner == winner
    if reason is not None:
        assert verdict.reason == reason
    assert verdict.how == ("json" if '"}' in reply else "text")      # a whole JSON object, or read from text


@pytest.mark.parametrize("reply", ["", "   ", "I have no idea what this is about.", "a b c",
                                   '{"winner": {"name": "Alejandro", "team": "Alejandro_Team"}}',
                                   "The verdict is a", "```json\n{\n",
                                   # the reply format repeated back (SmolLM2 does this), whole or cut off
                                   '{"winner": "A" or "B" or "tie", "reason": "one sentence saying why"}',
                                   '{"winner": "A" or "B" or "tie", "reason": "one sent'])
def test_parser_gives_none_for_garbage(reply):
    assert parse_verdict(reply) is None


# -------------------------------------------------------------------------------------- the arithmetic


def v(winner):
    return Verdict(winner, "because")


@pytest.mark.parametrize("first, second, score, consistent", [
    # order 1: A = base, B = adapter; order 2: A = adapter, B = base
    (v("B"), v("A"), 1.0, True),        # adapter won both orders
    (v("A"), v("B"), 0.0, True),        # base won both orders
    (v("tie"), v("tie"), 0.5, True),
    (v("B"), v("tie"), 0.75, False),    # won one, tied the other
    (v("tie"), v("B"), 0.25, False),
    (v("A"), v("A"), 0.5, False),       # position A won both times: position bias, counts as a tie
    (v("B"), v("B"), 0.5, False),
    (None, v("A"), 0.75, None),         # an unread reply counts as a tie; consistency unknown
    (None, None, 0.5, None),
])
def test_both_orders_combine_into_half_points(first, second, score, consistent):
    assert combine(first, second) == (score, consistent)


def test_wilson_interval_on_known_numbers():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)      # the textbook 8 of 10
    assert wilson_interval(0, 10)[0] == 0.0 and round(wilson_interval(0, 10)[1], 4) == 0.2775
    assert round(wilson_interval(10, 10)[0], 4) == 0.7225 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(5, 10)
    assert round(low + high, 9) == 1.0 and round(low, 4) == 0.2366                 # symmetric around 0.5
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(2.5, 4)                                             # half-points allowed
    assert low < 2.5 / 4 < high


def rows(n: int) -> list[RowResult]:
    items = [("What is 2 + 2?", "4", "5", "2 + 2 = 4."),
             ("Name the capital of France.", "Paris", "London.", "Paris is the capital of France."),
             ("Translate 'thank you' into German.", "Danke", "Thank you.", "Danke."),
             ("Give one word that rhymes with 'cat'.", "hat", "Dog.", "Hat."),
             ("Is 7 a prime number? Answer yes or no.", "yes", "No.", "Yes.")]
    return [RowResult("task", i + 1, prompt, reference, {"base": base, "adapter": adapter})
            for i, (prompt, reference, base, adapter) in enumerate(items[:n])]


def test_rows_scored_from_replies_with_unread_and_refused_replies_as_ties():
    replies = {(0, 0): '{"winner": "B", "reason": "B is right."}', (0, 1): '{"winner": "A", "reason": "A is right."}',
               (1, 0): '{"winner": "A", "reason": "A first."}', (1, 1): '{"winner": "A", "reason": "A again."}',
               (2, 0): "no idea", (2, 1): NotJudged("the judge endpoint rejected the request (HTTP 400: too long)")}
    result = judge.score_rows(rows(3), replies, "judge-x")
    assert [r.scores["adapter"]["judge_score"] for r in result.rows] == [1.0, 0.5, 0.5]
    assert [r.scores["base"]["judge_score"] for r in result.rows] == [0.0, 0.5, 0.5]
    first, second, third = (r.note for r in result.rows)
    assert "order 1 (A = base, B = adapter): adapter wins — B is right." in first
    assert "order 2 (A = adapter, B = base): adapter wins — A is right." in first
    assert "base wins — A first." in second and "adapter wins — A again." in second
    assert "could not be read, counted as a tie: \"no idea\"" in third and "not judged, counted as a tie" in third
    metrics = {m.name: m for m in result.metrics}
    rate = 2 / 3
    assert metrics["win_rate"].values == {"base": pytest.approx(1 - rate), "adapter": pytest.approx(rate)}
    low, high = wilson_interval(2.0, 3)
    assert metrics["win_rate_low"].values["adapter"] == pytest.approx(low)
    assert metrics["win_rate_high"].values["adapter"] == pytest.approx(high)
    assert metrics["win_rate_low"].values["base"] == pytest.approx(1 - high)
    assert metrics["position_inconsistent"].values == {"adapter": 0.5} and metrics["position_inconsistent"].rows == 2
    assert any("2 of 6 judge replies could not be read" in note for note in result.notes)
    assert result.notes[0].startswith("adapter won 1, base won 0, 2 even, of 3 rows judged by judge-x")


def test_settings_keep_the_key_out_of_repr_and_of_what_is_saved():
    settings = JudgeSettings(url="http://127.0.0.1:1/v1", model="m", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in json.dumps(settings.public())
    assert "api_key" not in settings.public() and settings.public()["rubric"] == judge.DEFAULT_RUBRIC
    assert all(f.metadata.get("help") for f in judge.fields(JudgeSettings))
    assert JudgeSettings(url="localhost:8000/v1", model="").problems()[0].startswith("url:")
    with pytest.raises(EvalError, match="not an http"):
        judge.run(None, None, rows(1), JudgeSettings(url="localhost:8000/v1", model="m"))


def test_no_rows_with_both_answers_is_one_sentence():
    lone = [RowResult("task", 1, "hi", answers={"base": "hello"})]
    with pytest.raises(EvalError, match="no row has both a 'base' and a 'adapter' answer"):
        judge.run(None, None, lone, JudgeSettings(url="http://127.0.0.1:1/v1", model="m"))


# --------------------------------------------------------------------------- an endpoint that cannot be used


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_sentence(text: str) -> bool:
    """No line break, no second sentence ("e.g. http" is fine), and a "; how to fix" part."""
    return "\n" not in text and not re.search(r"[.!?]\s+[A-Z]", text) and "; " in text


def test_closed_port_says_unreachable_and_how_to_fix():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EvalError) as raised:
        judge.run(None, Progress(), rows(2), JudgeSettings(url=url, model="judge", timeout_s=5))
    message = str(raised.value)
    assert message.startswith(f"the judge endpoint {url} is unreachable (connection refused); start its server")
    assert "/v1" in message and one_sentence(message)


def test_unknown_host_says_unreachable():
    url = "http://no-such-judge.invalid/v1"
    with pytest.raises(EvalError, match=r"is unreachable \(host name not found\); start its server or correct"):
        judge.run(None, None, rows(1), JudgeSettings(url=url, model="judge", timeout_s=5))


def test_refused_key_and_timeout_sentences():
    """transformers serve checks no key, so the 401 sentence is checked on the client's own exception."""
    import httpx
    import openai

    settings = JudgeSettings(url="https://api.example.com/v1", model="gpt-x", timeout_s=7)
    request = httpx.Request("POST", "https://api.example.com/v1/chat/completions")
    refused = openai.AuthenticationError("Incorrect API key provided", response=httpx.Response(401, request=request),
                                         body=None)
    message = judge.explain(refused, settings)
    assert message == ("the judge endpoint https://api.example.com/v1 refused the API key (HTTP 401); enter a valid "
                       "key for that endpoint in the judge's API key field")
    message = judge.explain(openai.APITimeoutError(request=request), settings)
    assert message.startswith("the judge endpoint https://api.example.com/v1 did not answer within 7 s;")
    assert one_sentence(message)


def test_parameters_a_newer_openai_model_refuses_are_changed_once():
    params = judge.request_params(JudgeSettings(max_tokens=99))
    assert params == {"temperature": 0.0, "max_tokens": 99}
    swapped = judge.adjust_params(params, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                          "Use 'max_completion_tokens' instead.")
    assert swapped == {"temperature": 0.0, "max_completion_tokens": 99}
    plain = judge.adjust_params(swapped, "Unsupported value: 'temperature' does not support 0.0 with this model. "
                                         "Only the default (1) value is supported.")
    assert plain == {"max_completion_tokens": 99}
    assert judge.adjust_params(plain, "Unsupported value: 'temperature' does not support 0.0") is None
    assert judge.adjust_params(params, "Server is pinned to 'x'; requested 'y'.") is None


# ------------------------------------------------------------------------------------------- a real server


def serve_available() -> bool:
    try:
        from transformers.utils.import_utils import is_serve_available
    except ImportError:
        return False
    return is_serve_available()


@pytest.fixture(scope="module")
def judge_server(bundled_model_dir, tmp_path_factory):
    """`transformers serve` on a free 127.0.0.1 port with the bundled SmolLM2 pinned, on CPU, offline; killed at
    the end. Yields (API base URL, the model name it serves)."""
    if not serve_available():
        pytest.skip("transformers serve needs fastapi, uvicorn, pydantic and openai (pip install "
                    "'transformers[serving]'); the judge's real-server tests are skipped")
    port = free_port()
    log_path = tmp_path_factory.mktemp("judge-server") / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(bundled_model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited ({process.returncode}): "
                            f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("transformers serve did not start in 180 s: "
                            f"{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", str(bundled_model_dir)
    finally:                      # the server's own process group (start_new_session): it and any children
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.mark.e2e
def test_real_judge_run_both_orders_win_rate_and_reasons(judge_server):
    url, model = judge_server
    seen = []
    settings = JudgeSettings(url=url, model=model, api_key="sk-never-saved", max_tokens=48, max_rows=4,
                             concurrency=2, timeout_s=120)
    result = judge.run(None, Progress(lambda fraction, text: seen.append((fraction, text))), rows(5), settings)
    assert result.section == "judge" and len(result.rows) == 4 and result.seconds > 0
    for row in result.rows:
        orders = [part for part in row.note.split(" | ")]
        assert len(orders) == 2, row.note                      # a verdict or a reading note for each order
        for part, label in zip(orders, ("order 1 (A = base, B = adapter): ", "order 2 (A = adapter, B = base): ")):
            assert part.startswith(label), row.note
            said = part[len(label):]
            assert said.startswith(("base wins", "adapter wins", "tie", "the judge's reply could not be read")), said
            if not said.startswith("the judge's"):
                assert " — " in said and said.split(" — ", 1)[1].strip(), said   # a reason per read verdict
        score = row.scores["adapter"]["judge_score"]
        assert score in (0.0, 0.25, 0.5, 0.75, 1.0) and row.scores["base"]["judge_score"] == 1 - score
    metrics = {m.name: m for m in result.metrics}
    rate = metrics["win_rate"].values["adapter"]
    low, high = metrics["win_rate_low"].values["adapter"], metrics["win_rate_high"].values["adapter"]
    assert 0 <= low <= rate <= high <= 1 and metrics["win_rate"].rows == 4
    assert rate == pytest.approx(sum(r.scores["adapter"]["judge_score"] for r in result.rows) / 4)
    assert "only the first 4 rows were judged" in " ".join(result.notes)
    assert len(seen) == 8 and seen[-1][0] == pytest.approx(8 / 9)       # 1 unit to start + 2 calls per row
    assert "sk-never-saved" not in json.dumps(result.to_dict())


@pytest.mark.e2e
def test_real_server_without_the_model_names_the_ones_it_serves(judge_server):
    url, model = judge_server
    with pytest.raises(EvalError) as raised:
        judge.run(None, None, rows(2), JudgeSettings(url=url, model="no-such-judge", max_tokens=8))
    message = str(raised.value)
    assert message.startswith(f"the judge endpoint {url} has no model 'no-such-judge' (HTTP 400")
    assert message.endswith(f"set the judge model to one it serves: {model}")


@pytest.mark.e2e
def test_real_server_at_a_url_without_v1_says_to_give_the_api_base(judge_server):
    url, model = judge_server
    base = url.removesuffix("/v1")
    with pytest.raises(EvalError) as raised:
        judge.run(None, None, rows(1), JudgeSettings(url=base, model=model, max_tokens=8))
    assert str(raised.value).startswith(f"the judge endpoint {base} has no chat completions API there (HTTP 404")
    assert "followed by /v1" in str(raised.value)

