"""The optional LLM judge: any OpenAI-compatible endpoint compares the base's and the adapter's answers.

Pairwise with a rubric, and each pair is judged twice with the answers' places swapped (A = base, B = adapter,
then A = adapter, B = base), because judges favour a position. Scoring, per row (the adapter's score):

- each order gives 1 (the adapter's answer won), 0.5 (a tie, or a reply that could not be read) or 0;
- the row scores the mean of its two orders: 1 = won in both orders, 0.75 = won one and tied the other,
  0.5 = tie, or the verdict followed the position (inconsistent), 0.25 and 0 the same for the base;
- the win rate is the mean row score (ties and inconsistent rows count half, as in MT-bench / Arena-Hard), with
  a 95% Wilson score interval over the rows (fractional rows vary less than a win-or-loss coin, so the
  interval is, if anything, wider than it needs to be);
- the base's win rate is 1 minus the adapter's, so the report draws the two as one bar pair.

The section only reads the rows (each RowResult carries both answers and the reference), never the model, so
it runs with `ctx=None`. The key is never logged, shown in a repr or saved (`JudgeSettings.public()`).
A judge that cannot be reached, refuses the key or lacks the model raises `EvalError` with one sentence; a
reply that cannot be read counts as a tie and says so in the row's note, so one bad reply never sinks a report.
"""
from __future__ import annotations

import json
import math
import re
import socket
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields

from backend.evaluate.common import EvalError, Metric, Progress, RowResult, SectionResult, range_problems

SECTION = "judge"

DEFAULT_RUBRIC = (
    "You are an impartial judge. Compare two answers, A and B, to the same user request and decide which is "
    "better, weighing in this order:\n"
    "1. Correctness: facts, numbers and code are right; when a reference answer is given, agreeing with it in "
    "substance (not in wording) matters most.\n"
    "2. Following the instruction: the answer does what was asked, in the form, language and length asked for.\n"
    "3. Helpfulness: clear, complete and to the point, without padding or unrelated content.\n"
    "Ignore which answer comes first and do not prefer an answer for being longer. Answer \"tie\" when neither "
    "is better.")

# Always appended to the rubric (a custom rubric cannot break the parser).
REPLY_FORMAT = ('Reply with one JSON object and nothing else, on one line: '
                '{"winner": "A" or "B" or "tie", "reason": "one sentence saying why"}')

MAX_PART_CHARS = 6000       # each of request, reference and answers, cut beyond this (the judge's context)
REASON_CHARS = 300


@dataclass
class JudgeSettings:
    """The judge endpoint and how it is asked; one field = one control (the key is never saved)."""
    url: str = field(default="", metadata={
        "help": "The OpenAI-compatible API base, usually ending in /v1 (e.g. http://127.0.0.1:8000/v1)."})
    model: str = field(default="", metadata={
        "help": "The judge's model name as the endpoint knows it (GET /v1/models lists them)."})
    api_key: str = field(default="", repr=False, metadata={
        "help": "The endpoint's API key, if it needs one; never logged or saved in the report.", "secret": True})
    rubric: str = field(default=DEFAULT_RUBRIC, metadata={
        "help": "What the judge weighs (system prompt); the JSON reply format is always added after it."})
    max_rows: int = field(default=50, metadata={
        "help": "Rows judged at most (the first ones); each costs two judge calls (both orders).",
        "min": 1, "max": 1000})
    timeout_s: float = field(default=60.0, metadata={
        "help": "Seconds to wait for one judge reply before giving up on the endpoint.", "min": 1.0, "max": 3600.0})
    temperature: float = field(default=0.0, metadata={
        "help": "The judge's sampling temperature; 0 = the same verdict every time.", "min": 0.0, "max": 2.0})
    max_tokens: int = field(default=256, metadata={
        "help": "Longest judge reply in tokens (the JSON verdict needs about 60).", "min": 8, "max": 8192})
    concurrency: int = field(default=4, metadata={
        "help": "Judge calls in flight at once (1 = one at a time, for a small local server).",
        "min": 1, "max": 64})

    def problems(self) -> list[str]:
        out = range_problems(self)
        if not re.match(r"^https?://[^/\s]+", self.url.strip()):
            out.append(f"url: '{self.url}' is not an http(s) URL; give the API base, e.g. http://127.0.0.1:8000/v1")
        if not self.model.strip():
            out.append("model: name the judge endpoint's model (e.g. the one `GET /v1/models` lists)")
        return out

    def public(self) -> dict:
        """The settings as a report may save them: the key left out."""
        data = asdict(self)
        data.pop("api_key", None)
        return data


# ------------------------------------------------------------------------------------------- reading replies

@dataclass
class Verdict:
    winner: str                 # "A" | "B" | "tie"
    reason: str = ""
    how: str = "json"           # json | text (read from prose): said in the note


_LETTER = re.compile(r"^(?:answer|response|assistant|model|output)?\s*_?([ab])$")
_TIE_WORDS = {"tie", "draw", "equal", "equally good", "both", "neither", "none", "same", "c", "tied", "even"}
_WINNER_KEYS = ("winner", "verdict", "better", "preferred", "preference", "choice", "answer", "result")
_REASON_KEYS = ("reason", "explanation", "rationale", "justification", "why", "comment")


def _winner(value) -> str | None:
    """'A' / 'B' / 'tie' from a verdict value ('A', 'answer b', '[[C]]', 'Tie', ...); None when unreadable."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"[\s\"'`*\[\]().:]+", " ", value).strip().lower()
    if text in _TIE_WORDS:
        return "tie"
    letter = _LETTER.match(text)
    return letter.group(1).upper() if letter else None


def _from_mapping(obj: dict) -> Verdict | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for key in _WINNER_KEYS:
        winner = _winner(lowered.get(key))
        if winner:
            reason = next((str(lowered[k]) for k in _REASON_KEYS if lowered.get(k) not in (None, "")), "")
            return Verdict(winner, _one_line(reason), "json")
    return None


_AB = r"(?-i:([AB]))"   # a verdict letter must be a capital: "a" is mostly the article
_KEY_VALUE = re.compile(
    r"[\"']?(?:winner|verdict)[\"']?\s*[:=]\s*[\"'\[(*]*\s*(?:answer\s+|response\s+)?"
    r"(tie|draw|equal|[ab])(?![a-z])(?!\s+(?:tie|draw)\b)", re.I)
_ECHO = re.compile(r"\{[^{}]*\"A\"\s+or\s+\"B\"[^{}]*\}?")
_MT_BENCH = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_PROSE = [
    (re.compile(r"\b(?:answer|response|assistant|output)\s+\(?" + _AB + r"\)?\s+(?:is|was|seems|appears|would be)"
                r"\s+(?:(?!not\b)\w+\s+){0,2}?(?:better|superior|preferable|stronger|more\s+\w+)", re.I), None),
    (re.compile(r"\b(?:winner|verdict|i\s+(?:would\s+)?(?:prefer|choose|pick)|(?:better|preferred)\s+"
                r"(?:answer|response)(?:\s+is)?)\s*(?:is|would\s+be)?\s*[:=\-]?\s*[*\"'(\[]*\s*"
                r"(?:answer\s+|response\s+)?" + _AB + r"\b", re.I), None),
    (re.compile(r"\b(?:it'?s\s+a\s+tie|(?:verdict|winner|result)\s*(?:is|:)\s*(?:a\s+)?tie|"
                r"both\s+(?:answers|responses)\s+are\s+(?:equally\s+\w+|equal)|neither\s+(?:answer|response)\s+is"
                r"\s+better)\b", re.I), "tie"),
]


def parse_verdict(text: str | None) -> Verdict | None:
    """The judge's verdict from its reply: a JSON object (bare, fenced or inside prose), else a `winner: X`
    line (a truncated JSON reply), else MT-bench's [[A]] / [[B]] / [[C]], else the last verdict sentence in
    prose ("Answer B is better", "it's a tie"); None when none of those is there."""
    if not text or not text.strip():
        return None
    text = text.strip()
    decoder = json.JSONDecoder()
    for brace in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, brace.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and (verdict := _from_mapping(obj)):
            return verdict
    text = _ECHO.sub(" ", text).strip()      # the reply format repeated back is no verdict
    found = _KEY_VALUE.search(text)
    if found:
        reason = re.search(r"[\"']?(?:reason|explanation|rationale)[\"']?\s*[:=]\s*[\"']?([^\"'\n}]*)", text, re.I)
        return Verdict(_winner(found.group(1)) or "tie", _one_line(reason.group(1) if reason else ""), "text")
    marks = _MT_BENCH.findall(text)
    if marks:
        return Verdict({"A": "A", "B": "B"}.get(marks[-1], "tie"), _prose_reason(text), "text")
    last = None
    for pattern, fixed in _PROSE:
        for match in pattern.finditer(text):
            if last is None or match.start() >= last[0]:
                last = (match.start(), fixed or match.group(1).upper())
    return Verdict(last[1], _prose_reason(text), "text") if last else None


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 1] + "…"


def _prose_reason(text: str) -> str:
    return _one_line(re.sub(r"```\w*|\[\[\s*[ABC]\s*\]\]|[{}*#]", " ", text))


# --------------------------------------------------------------------------------------------- the arithmetic

def order_score(verdict: Verdict | None, adapter_position: str) -> float:
    """One order's score for the answer at `adapter_position` ('A' or 'B'): 1 won, 0.5 tie or unread, 0 lost."""
    if verdict is None or verdict.winner == "tie":
        return 0.5
    return 1.0 if verdict.winner == adapter_position else 0.0


def combine(first: Verdict | None, second: Verdict | None) -> tuple[float, bool | None]:
    """(row score for variant b, position-consistent?) from order 1 (A = a, B = b) and order 2 (A = b, B = a).

    The score is the mean of the two orders' scores; consistent is None when either reply was unread, else
    whether both orders gave the same result (a verdict that follows the position is inconsistent and scores
    0.5, like a tie)."""
    one, two = order_score(first, "B"), order_score(second, "A")
    consistent = None if first is None or second is None else one == two
    return (one + two) / 2, consistent


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion successes / n; (0, 1) without rows.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes and for small n;
    `successes` may be fractional (half-points for ties)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if p == 0 else low), (1.0 if p == 1 else high)    # exact ends (no 0.9999999999999999)


# ------------------------------------------------------------------------------------------ talking to it

def messages_for(row: RowResult, first: str, second: str, rubric: str) -> list[dict]:
    """The judge's conversation for one order: the rubric + reply format, then the request, the reference
    (when there is one) and the two answers as A and B."""
    parts = [f"[User request]\n{_cut(row.prompt)}"]
    if row.reference.strip():
        parts.append(f"[Reference answer]\n{_cut(row.reference)}")
    parts += [f"[Answer A]\n{_cut(first)}", f"[Answer B]\n{_cut(second)}",
              'Which answer is better? Reply with the JSON object only: {"winner": ..., "reason": ...}']
    return [{"role": "system", "content": f"{(rubric or DEFAULT_RUBRIC).strip()}\n\n{REPLY_FORMAT}"},
            {"role": "user", "content": "\n\n".join(parts)}]


def _cut(text: str) -> str:
    text = (text or "").strip() or "(empty answer)"
    return text if len(text) <= MAX_PART_CHARS else text[:MAX_PART_CHARS] + " … (cut)"


def client_for(settings: JudgeSettings):
    from openai import OpenAI
    return OpenAI(base_url=settings.url.strip().rstrip("/"), api_key=settings.api_key or "none",
                  timeout=float(settings.timeout_s), max_retries=1)


def request_params(settings: JudgeSettings) -> dict:
    return {"temperature": float(settings.temperature), "max_tokens": int(settings.max_tokens)}


def adjust_params(params: dict, message: str) -> dict | None:
    """The request parameters a 400 asks for, or None when it asks for nothing we can change: newer OpenAI
    models refuse `max_tokens` (they want `max_completion_tokens`) and some refuse any `temperature`."""
    text = message.lower()
    if "max_tokens" in params and "max_completion_tokens" in text:
        changed = {k: v for k, v in params.items() if k != "max_tokens"}
        return {**changed, "max_completion_tokens": params["max_tokens"]}
    if "temperature" in params and "temperature" in text and re.search(r"unsupported|not support|only the default",
                                                                        text):
        return {k: v for k, v in params.items() if k != "temperature"}
    return None


def ask(client, settings: JudgeSettings, messages: list[dict], params: dict | None = None) -> str:
    reply = client.chat.completions.create(model=settings.model, messages=messages,
                                           **(params if params is not None else request_params(settings)))
    if not reply.choices:
        return ""
    return reply.choices[0].message.content or ""


class NotJudged(Exception):
    """One order of one pair the endpoint would not judge (a 400 / 422 / 5xx for that request only); its
    text is the sentence for the row's note."""


def explain(error: BaseException, settings: JudgeSettings, client=None) -> str:
    """One sentence for an endpoint failure: what went wrong with which endpoint, and how to fix it."""
    import openai

    url = settings.url.strip()
    if isinstance(error, openai.APITimeoutError):
        return (f"the judge endpoint {url} did not answer within {settings.timeout_s:g} s; check that its server "
                "is running and not overloaded, or raise the judge's timeout")
    if isinstance(error, openai.APIConnectionError):
        return (f"the judge endpoint {url} is unreachable ({_cause(error)}); start its server or correct the URL "
                "(the API base, usually ending in /v1, e.g. http://127.0.0.1:8000/v1)")
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return (f"the judge endpoint {url} refused the API key (HTTP {error.status_code}); enter a valid key "
                "for that endpoint in the judge's API key field")
    if isinstance(error, openai.APIStatusError):
        served = _served_models(client)
        detail = _one_line(_detail(error))[:160]
        if served is not None and settings.model not in served:
            listed = ", ".join(served[:8]) + (", …" if len(served) > 8 else "") if served else "none listed"
            return (f"the judge endpoint {url} has no model '{settings.model}' (HTTP {error.status_code}: "
                    f"{detail}); set the judge model to one it serves: {listed}")
        if error.status_code == 404:
            return (f"the judge endpoint {url} has no chat completions API there (HTTP 404: {detail}); give the "
                    "API base, usually the server's address followed by /v1")
        return (f"the judge endpoint {url} rejected the request (HTTP {error.status_code}: {detail}); check the "
                f"model name '{settings.model}' and that the server supports /chat/completions")
    return f"the judge endpoint {url} failed ({type(error).__name__}: {_one_line(str(error))[:160]})"


def _cause(error: BaseException) -> str:
    seen = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        text = str(seen).lower()
        if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
            return "host name not found"
        if "connection refused" in text:
            return "connection refused"
        if "certificate" in text or "ssl" in text:
            return "TLS certificate problem"
        if "unsupported protocol" in text or "missing an 'http://'" in text:
            return "not an http(s) URL"
        seen = seen.__cause__ or seen.__context__
    return _one_line(str(error))[:80] or "no connection"


def _detail(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        text = inner.get("message") or inner.get("detail") or body.get("detail")
        if text:
            return str(text)
    return getattr(error, "message", "") or str(error)


def _served_models(client) -> list[str] | None:
    """The model ids GET /models lists, or None when the endpoint does not say."""
    if client is None:
        return None
    try:
        return [m.id for m in client.models.list().data]
    except Exception:  # noqa: BLE001 - only used to word the sentence
        return None


def _fatal(error: BaseException) -> bool:
    """Errors about the endpoint (every later call would fail the same way) rather than about one pair; any
    error of the first call counts as the endpoint's (`run` makes that call alone)."""
    import openai
    if isinstance(error, (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
                          openai.NotFoundError)):
        return True
    return not isinstance(error, openai.APIStatusError)


# ------------------------------------------------------------------------------------------------- the section

def run(ctx, progress: Progress | None, rows: list[RowResult], settings: JudgeSettings, a: str = "base",
        b: str = "adapter") -> SectionResult:
    """Judge variant b against a on the rows that carry both answers; section "judge".

    `ctx` is not used (None is fine). Raises EvalError (one sentence) when the settings are wrong, no row has
    both answers, or the endpoint cannot be used (unreachable, key refused, no such model)."""
    import openai

    started = time.perf_counter()
    problems = settings.problems()
    if problems:
        raise EvalError("the judge settings are wrong: " + "; ".join(problems))
    pairs = [r for r in rows if a in r.answers and b in r.answers][:settings.max_rows]
    if not pairs:
        raise EvalError(f"no row has both a '{a}' and a '{b}' answer for the judge to compare; run the held-out "
                        "rows or the general prompts section with the judge")
    progress = progress or Progress()
    progress.add_total(2 * len(pairs))
    client = client_for(settings)

    jobs = []     # (row index, order): order 0 = (A = a, B = b), 1 = (A = b, B = a)
    for index, row in enumerate(pairs):
        jobs.append((index, 0, messages_for(row, row.answers[a], row.answers[b], settings.rubric)))
        jobs.append((index, 1, messages_for(row, row.answers[b], row.answers[a], settings.rubric)))
    replies: dict[tuple[int, int], str | NotJudged] = {}

    def call(job):
        try:
            return ask(client, settings, job[2], params)
        except Exception as error:  # noqa: BLE001 - sorted below: the endpoint's fault or this pair's
            if _fatal(error):
                raise
            return NotJudged(explain(error, settings))

    try:
        # the first call alone: a wrong URL, key or model fails at once instead of once per row
        params = request_params(settings)
        while True:       # a 400 that names a parameter this model refuses: ask again without it (ends:
            try:          # each adjustment drops a parameter)
                replies[jobs[0][:2]] = ask(client, settings, jobs[0][2], params)
                break
            except openai.BadRequestError as error:
                adjusted = adjust_params(params, _detail(error))
                if adjusted is None:
                    raise
                params = adjusted
        progress.advance(1, f"judge 1/{len(jobs)}")
        with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
            pending = {pool.submit(call, job): job[:2] for job in jobs[1:]}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    key = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    replies[key] = future.result()
                    progress.advance(1, f"judge {len(replies)}/{len(jobs)}")
    except EvalError:
        raise
    except Exception as error:  # noqa: BLE001 - one sentence for the report
        raise EvalError(explain(error, settings, client)) from error
    finally:
        client.close()

    result = score_rows(pairs, replies, settings.model, a, b)
    if len(pairs) < len([r for r in rows if a in r.answers and b in r.answers]):
        result.notes.append(f"only the first {len(pairs)} rows were judged (the judge's row limit).")
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def score_rows(pairs: list[RowResult], replies: dict, judge_model: str = "the judge", a: str = "base",
               b: str = "adapter") -> SectionResult:
    """The section from the judge's raw replies: `replies[(row index, order)]` is the reply text (or a
    NotJudged) for order 0 (A = a, B = b) and order 1 (A = b, B = a) of each pair. Unread replies count as
    ties and say so in the row's note."""
    out_rows, total, consistent_rows, inconsistent, unread = [], 0.0, 0, 0, 0
    wins = {a: 0, b: 0, "tie": 0}
    for index, row in enumerate(pairs):
        verdicts, notes = [], []
        for order, (first, second) in enumerate(((a, b), (b, a))):
            reply = replies[(index, order)]
            verdict = None if isinstance(reply, NotJudged) else parse_verdict(reply)
            verdicts.append(verdict)
            label = f"order {order + 1} (A = {first}, B = {second})"
            if isinstance(reply, NotJudged):
                unread += 1
                notes.append(f"{label}: not judged, counted as a tie: {reply}")
            elif verdict is None:
                unread += 1
                shown = _one_line(reply)[:120] or "(empty reply)"
                notes.append(f"{label}: the judge's reply could not be read, counted as a tie: \"{shown}\"")
            else:
                named = "tie" if verdict.winner == "tie" else f"{first if verdict.winner == 'A' else second} wins"
                read = " (read from prose)" if verdict.how == "text" else ""
                notes.append(f"{label}: {named}{read} — {verdict.reason or '(no reason given)'}")
        score, consistent = combine(*verdicts)
        total += score
        if consistent is not None:
            consistent_rows += 1
            inconsistent += not consistent
        wins[b if score > 0.5 else a if score < 0.5 else "tie"] += 1
        out_rows.append(RowResult(section=SECTION, row=index + 1, prompt=row.prompt, reference=row.reference,
                                  answers={a: row.answers[a], b: row.answers[b]},
                                  scores={a: {"judge_score": 1 - score}, b: {"judge_score": score}},
                                  note=" | ".join(notes)))

    n = len(pairs)
    rate = total / n
    low, high = wilson_interval(total, n)
    share = inconsistent / consistent_rows if consistent_rows else None
    metrics = [
        Metric(SECTION, "win_rate", "judge win rate", True, {a: 1 - rate, b: rate}, rows=n,
               help=f"Share of rows the judge preferred each side, both answer orders averaged (won both = 1, "
                    f"won one and tied = 0.75, a tie or one win each = 0.5), judged by {judge_model}."),
        Metric(SECTION, "win_rate_low", "judge win rate, 95% CI low", True, {a: 1 - high, b: low}, rows=n,
               help="Lower end of the 95% Wilson score interval of the win rate over the rows judged."),
        Metric(SECTION, "win_rate_high", "judge win rate, 95% CI high", True, {a: 1 - low, b: high}, rows=n,
               help="Upper end of the 95% Wilson score interval of the win rate over the rows judged."),
        Metric(SECTION, "position_inconsistent", "judge position-inconsistent rows", False, {b: share},
               rows=consistent_rows,
               help="Share of rows (both replies read) whose verdict changed when the answers swapped places: a "
                    "judge swayed by position; a row won in one order and lost in the other scores 0.5."),
    ]
    notes = [f"{b} won {wins[b]}, {a} won {wins[a]}, {wins['tie']} even, of {n} rows judged by {judge_model} "
             f"in both orders; {b}'s win rate {rate:.2f} (95% CI {low:.2f} to {high:.2f})."]
    if unread:
        notes.append(f"{unread} of {2 * n} judge replies could not be read or were refused and count as ties.")
    if share is not None and share > 0.5:
        notes.append(f"the judge changed its verdict with the answers' order in {inconsistent} of the "
                     f"{consistent_rows} rows it answered readably in both orders: a stronger judge model would "
                     "give a more telling win rate.")
    return SectionResult(SECTION, metrics=metrics, rows=out_rows, notes=notes)
