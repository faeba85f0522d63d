"""An OpenAI-compatible API over one Engine: /v1/models, /v1/chat/completions, /v1/completions.

Every refusal is OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` with one sentence, so
the `openai` client raises its matching exception (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError). A request is checked in full before a stream starts, so a streamed refusal still gets its status;
a failure after that ends the stream with an error event. No request takes the server down.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from typing import Literal

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from backend.hosts import allowed_hosts, host_allowed, host_name
from backend.serve import toolcall_api
from backend.serve.engine import Engine, Piece, Prepared, ServeError

log = logging.getLogger("lorastudio")

KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error"}


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    tool_calls: list[dict] | None = None          # an assistant's earlier calls
    tool_call_id: str | None = None               # a tool result's call


class Sampling(BaseModel):
    """The decoding parameters both endpoints take; others OpenAI defines are accepted and ignored."""
    model_config = ConfigDict(extra="ignore")
    model: str
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream_options: dict | None = None


class ChatRequest(Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None     # the newer name of max_tokens
    tools: list[dict] | None = None              # function schemas, rendered by the chat template as in training
    tool_choice: str | dict | None = None        # "none" hides the tools; other values: the model decides


class CompletionRequest(Sampling):
    prompt: str | list[str]


def error_body(message: str, status: int, param: str | None = None, code: str | None = None,
               kind: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind or KINDS.get(status, "server_error"), "param": param,
                      "code": code}}


def build_api(engine: Engine, api_key: str | None = None, allowed: frozenset[str] | None = None) -> FastAPI:
    """`allowed`: the host names requests may carry (backend.hosts.allowed_hosts of the bound address, plus the
    user's --allowed-hosts); by default those of a loopback bind."""
    app = FastAPI(title="LoRA Studio OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    allowed = allowed_hosts("127.0.0.1") if allowed is None else allowed

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        # DNS rebinding: a web page whose name now resolves to this machine would reach the API as its own
        # origin; an API key stops it too, but the default loopback server has none
        host = request.headers.get("host", "")
        if not host_allowed(host, allowed):
            sentence = (f"requests for host '{host_name(host)}' are refused: this server answers to "
                        f"{', '.join(sorted(allowed - {'*'}))[:200]}; start it with --allowed-hosts "
                        f"{host_name(host) or 'NAME'} to allow that name")
            return JSONResponse(error_body(sentence, 403, code="host_not_allowed"), status_code=403)
        return await call_next(request)

    def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ServeError("a valid API key is required: send it as 'Authorization: Bearer KEY'",
                             status=401, code="invalid_api_key", kind="authentication_error")

    @app.exception_handler(ServeError)
    async def serve_error(_, error: ServeError):
        return JSONResponse(error_body(str(error), error.status, error.param, error.code, error.kind),
                            status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = f"{'.'.join(where) or 'the request body'}: {first.get('msg', 'is not valid').lower()}"
        return JSONResponse(error_body(message, 400, where[0] if where else None, "invalid_value"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_, error: HTTPException):
        return JSONResponse(error_body(str(error.detail), error.status_code), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_, error: Exception):   # logged with its traceback; the server keeps serving
        log.exception("serve: request failed")
        return JSONResponse(error_body(f"the server failed on this request: {_one_line(error)}", 500), 500)

    @app.get("/studio/stats", dependencies=[Depends(require_key)])
    def studio_stats():   # what the app's Serve tab shows: the base, adapters in memory, recent requests
        return engine.stats()

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    def list_models():
        created = int(time.time())
        data = [{"id": engine.model_name, "object": "model", "created": created, "owned_by": "lorastudio",
                 "parent": None}]
        data += [{"id": job_id, "object": "model", "created": created, "owned_by": "lorastudio",
                  "parent": engine.model_name} for job_id in engine.usable_adapters()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    def chat_completions(body: ChatRequest):
        messages = [toolcall_api.message(m.role, _text(m.content), m.tool_calls, m.tool_call_id, i)
                    for i, m in enumerate(body.messages)]
        if not messages:
            raise ServeError("messages must hold at least one message", param="messages")
        tools = None if body.tool_choice == "none" else toolcall_api.schemas(body.tools)
        max_tokens = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
        prepared = _prepare(engine, body, messages=messages, max_tokens=max_tokens, tools=tools)
        return _respond(engine, prepared, body, chat=True, tools=bool(tools))

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    def completions(body: CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ServeError("prompt must be one string: send one request per prompt", param="prompt")
        return _respond(engine, _prepare(engine, body, prompt=prompts[0], max_tokens=body.max_tokens), body,
                        chat=False)

    return app


def _prepare(engine: Engine, body: Sampling, max_tokens: int | None, tools: list[dict] | None = None,
             **prompt) -> Prepared:
    if body.n != 1:
        raise ServeError(f"n must be 1 on this server (one answer per request), not {body.n}", param="n")
    return engine.prepare(body.model, temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens,
                          stop=body.stop, seed=body.seed, tools=tools, **prompt)


def _respond(engine: Engine, prepared: Prepared, body: Sampling, chat: bool, tools: bool = False):
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    shape = _Shape(ident, int(time.time()), body.model, chat)
    if not body.stream:
        return shape.whole(engine.complete(prepared), tools)
    usage = bool((body.stream_options or {}).get("include_usage"))
    calls = toolcall_api.CallStream() if tools else None
    return StreamingResponse(_events(engine.stream(prepared), shape, usage, calls), media_type="text/event-stream")


async def _events(pieces, shape: "_Shape", usage: bool, calls: "toolcall_api.CallStream | None" = None):
    """SSE events from the engine's stream; each step runs in a thread (generation blocks), and the stream is
    closed when the client goes away, which stops the generation and frees the engine's lock. With tools, the
    text of a tool call is held back and sent as one tool_calls delta once the answer is complete."""
    try:
        if shape.chat:
            yield _event(shape.chunk({"role": "assistant", "content": ""}))
        while True:
            piece = await run_in_threadpool(next, pieces, None)
            if piece is None:
                break
            delta = calls.feed(piece.delta) if calls else piece.delta
            if delta:
                yield _event(shape.chunk({"content": delta} if shape.chat else delta))
            if piece.done:
                finish_reason = piece.finish_reason
                if calls:
                    rest, tool_calls = calls.finish()
                    if rest:
                        yield _event(shape.chunk({"content": rest}))
                    if tool_calls:
                        yield _event(shape.chunk({"tool_calls": toolcall_api.deltas(tool_calls)}))
                        finish_reason = "tool_calls"
                yield _event(shape.chunk({} if shape.chat else "", finish_reason))
                if usage:
                    yield _event({**shape.chunk({}), "choices": [], "usage": _usage(piece)})
    except Exception as error:  # noqa: BLE001 - the status is sent already: tell the client in the stream
        log.exception("serve: stream failed")
        yield _event(error_body(f"the server failed on this request: {_one_line(error)}", 500))
    finally:
        with anyio.CancelScope(shield=True):   # also when the client went away and this task is cancelled
            await run_in_threadpool(pieces.close)
    yield "data: [DONE]\n\n"


class _Shape:
    """OpenAI's response objects for one request (chat.completion / text_completion and their chunks)."""

    def __init__(self, ident: str, created: int, model: str, chat: bool):
        self.ident, self.created, self.model, self.chat = ident, created, model, chat

    def _head(self, kind: str) -> dict:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, piece: Piece, tools: bool = False) -> dict:
        if self.chat:
            message, finish_reason = {"role": "assistant", "content": piece.text}, piece.finish_reason
            content, calls = toolcall_api.split(piece.text) if tools else (piece.text, [])
            if calls:
                message = {"role": "assistant", "content": content or None, "tool_calls": calls}
                finish_reason = "tool_calls"
            choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": None}
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": [choice],
                "usage": _usage(piece)}

    def chunk(self, delta, finish_reason: str | None = None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice]}


def _usage(piece: Piece) -> dict:
    return {"prompt_tokens": piece.prompt_tokens, "completion_tokens": piece.completion_tokens,
            "total_tokens": piece.prompt_tokens + piece.completion_tokens}


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _text(content: str | list[dict] | None) -> str:
    """A message's text; OpenAI's content parts are accepted when they are text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not all(part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
        raise ServeError("message content parts must be text: this server serves text models only", param="messages")
    return "".join(part["text"] for part in content)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def serve_in_thread(app: FastAPI, start_timeout_s: float = 30.0):
    """The API on a free loopback port in a daemon thread (tests and the serve bench talk to it over real HTTP):
    (uvicorn server, its thread, the port). Stop it with `server.should_exit = True` and join the thread."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the API server did not start on 127.0.0.1:{port} within {start_timeout_s:.0f} s")
        time.sleep(0.02)
    return server, thread, port
