"""The serving engine: one base model loaded once, the adapters of many jobs on it by name.

An adapter is loaded on first use with peft's `load_adapter` under its model id (the job id, or
`JOB@checkpoint-N` for a job's complete checkpoint), kept in an LRU of `max_adapters`, and evicted with
`delete_adapter`; the base is never loaded twice. The base answers through `disable_adapter()` on the same
weights. Answers come from `backend.serve.chat.stream_answer`, so a chat answer equals the playground's for the
same settings. One lock serialises generation for now; a request is prepared (model resolved, prompt counted,
settings checked) apart from its generation, so a later batching scheduler can take prepared requests.

It records, for a later Serve tab, each adapter's load time and weight bytes and each request's latency and
token counts (`Engine.stats()`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backend import jobs, models
from backend.jobs.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint
from backend.models import adapters, methods
from backend.serve.chat import GenerationSettings, conversation, stream_answer

log = logging.getLogger("lorastudio")

DEFAULT_MAX_ADAPTERS = 4
DEFAULT_MAX_TOKENS = 512      # when a request names none (and the context leaves that much room)
MAX_STOPS = 4                 # as OpenAI's API
RECENT_REQUESTS = 1000        # request records kept for the Serve tab
CHECKPOINT_MARK = "@"         # JOB@checkpoint-N


class ServeError(ValueError):
    """One sentence for the client, with the HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind


@dataclass
class LoadedAdapter:
    name: str                   # the model id a request names, also its peft adapter name
    source: adapters.AdapterSource
    tokenizer: object
    load_ms: float
    weight_bytes: int
    requests: int = 0


@dataclass
class RequestRecord:
    model: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_s: float | None
    finish_reason: str          # stop | length | aborted | error
    finished_at: float = field(default_factory=time.time)


@dataclass
class Prepared:
    """A checked request, ready to generate: what a scheduler would queue."""
    model_id: str
    adapter: str | None         # None = the base
    tokenizer: object
    settings: GenerationSettings
    prompt_tokens: int
    stops: list[str]
    messages: list[dict] | None = None   # a chat request
    prompt: str | None = None            # a raw completion


@dataclass
class Piece:
    """What a stream yields: the new text since the last piece; the last one has done=True and the totals."""
    delta: str
    done: bool = False
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine:
    def __init__(self, model: str | None = None, preload: list[str] | tuple[str, ...] = (),
                 max_adapters: int = DEFAULT_MAX_ADAPTERS):
        if max_adapters < 1:
            raise ServeError(f"max_adapters must be at least 1, not {max_adapters}")
        self.max_adapters = max_adapters
        # one generation or adapter change at a time (adapters are model-wide); a plain Lock, as a stream's
        # steps may run on different threads of the web server's pool
        self.lock = threading.Lock()
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()   # least recently used first
        self.load_counts: Counter[str] = Counter()
        self.requests: deque[RequestRecord] = deque(maxlen=RECENT_REQUESTS)
        first = [self._source_for(name) for name in preload]
        spec = model or (first[0][1].config.model if first else models.BUNDLED_MODEL)
        self.info = models.resolve(spec)
        self.model_name = self.info.name
        started = time.perf_counter()
        self.base = self._load_base(first)
        self.base_load_ms = (time.perf_counter() - started) * 1000
        self.peft = None                # the PeftModel around self.base once an adapter is loaded
        self.base_tokenizer = models.load_tokenizer(self.model_name)
        self.max_positions = int(getattr(self.base.config, "max_position_embeddings", 0)
                                 or self.base_tokenizer.model_max_length)
        for name, _ in first:
            self.resolve(name)          # refuses an adapter of another base before anything is served
            with self.lock:
                self._ensure(name)

    # ------------------------------------------------------------ models

    def _load_base(self, first):
        """In 4 bits (as trained) only when every preloaded adapter trained on a 4-bit base, as the playground."""
        dtype = adapters.compute_dtype()
        sources = [source for _, source in first]
        four_bit = bool(sources) and all(source.four_bit for source in sources)
        quantization = methods.build(sources[0].config, compute_dtype=dtype).quantization_config if four_bit else None
        target = adapters.device()
        base = models.load_model(self.info.name, dtype=dtype, quantization_config=quantization,
                                 device_map={"": 0 if target == "cuda" else "cpu"} if quantization else None)
        if quantization is None:
            base.to(target)
        base.eval()
        return base

    def usable_adapters(self) -> list[str]:
        """Finished jobs on this base with a final adapter, oldest first."""
        found = []
        for job in sorted(jobs.list_jobs(), key=lambda job: job.created):
            if (job.run_dir / "adapter" / "adapter_config.json").is_file() and self._same_base(job.config.model):
                found.append(job.id)
        return found

    def _same_base(self, spec: str) -> bool:
        if spec == self.model_name:
            return True
        try:   # a registry name or a folder; a job never names a .gguf after training, so nothing converts here
            return Path(models.resolve(spec).path).resolve() == Path(self.info.path).resolve()
        except (models.ModelError, OSError):
            return False

    def resolve(self, model_id: str) -> str | None:
        """The adapter name a model id means (None = the base); raises ServeError when it cannot be served."""
        name = (model_id or "").strip()
        if name == self.model_name:
            return None
        if ":" in name:
            base, name = name.split(":", 1)
            if base != self.model_name:
                raise ServeError(f"model '{model_id}' names the base '{base}', but this server serves "
                                 f"'{self.model_name}'; ask for '{self.model_name}:{name}' or GET /v1/models",
                                 status=404, param="model", code="model_not_found")
        job_id, source = self._source_for(name, model_id)
        if not self._same_base(source.config.model):
            raise ServeError(f"job {job_id} was trained on base '{source.config.model}', but this server serves "
                             f"'{self.model_name}'; start a server for that base with `lorastudio serve --model "
                             f"{source.config.model}`", param="model", code="adapter_base_mismatch")
        return name

    def _source_for(self, name: str, model_id: str | None = None) -> tuple[str, adapters.AdapterSource]:
        """(job id, the adapter folder) for JOB (its final adapter) or JOB@checkpoint-N (that checkpoint)."""
        model_id = model_id or name
        job_id, _, checkpoint = name.partition(CHECKPOINT_MARK)
        job = jobs.get(job_id) if job_id else None
        if job is None:
            raise ServeError(f"the model '{model_id}' does not exist: it is neither this server's base nor a job in "
                             "this workspace (GET /v1/models lists what is served)",
                             status=404, param="model", code="model_not_found")
        newest = latest_complete_checkpoint(job.run_dir / "checkpoints", remove_torn=False)
        if not checkpoint:
            final = job.run_dir / "adapter"
            if (final / "adapter_config.json").is_file():
                return job.id, adapters.AdapterSource(job.id, final, "final adapter", job.config, job.status)
            if newest is not None and (newest / "adapter_config.json").is_file():
                raise ServeError(f"job {job.id} is {job.status} (step {job.step}) and has no final adapter yet; ask "
                                 f"for model '{job.id}{CHECKPOINT_MARK}{newest.name}' to use its newest complete "
                                 "checkpoint", param="model", code="adapter_not_final")
            raise ServeError(f"job {job.id} is {job.status} (step {job.step}) and has saved no adapter yet: it saves "
                             f"one every {job.config.training.save_steps} steps and at the end",
                             param="model", code="adapter_not_ready")
        folder = job.run_dir / "checkpoints" / checkpoint
        if not ((folder / COMPLETE_MARKER).exists() and (folder / "adapter_config.json").is_file()):
            latest = f"; its newest complete one is '{job.id}{CHECKPOINT_MARK}{newest.name}'" if newest else ""
            raise ServeError(f"job {job.id} has no complete checkpoint named '{checkpoint}'{latest}",
                             status=404, param="model", code="model_not_found")
        if methods.spec(job.config.method).converts_at_save:
            raise ServeError(f"job {job.id} is a PiSSA job, whose checkpoints hold the adapter for the residual "
                             "base until it finishes; serve its final adapter once it completes",
                             param="model", code="adapter_not_final")
        label = f"{checkpoint} (job {job.status})"
        return job.id, adapters.AdapterSource(job.id, folder, label, job.config, job.status)

    def _ensure(self, name: str) -> LoadedAdapter:
        """The adapter loaded and most recently used; loads it (evicting the least recently used) when needed.
        Call with the lock held."""
        entry = self.loaded.get(name)
        if entry is not None:   # a final adapter or a complete checkpoint never changes: no need to look again
            self.loaded.move_to_end(name)
            return entry
        _, source = self._source_for(name)
        started = time.perf_counter()
        if self.peft is None:
            from peft import PeftModel
            # wraps the loaded base in place: no second copy of its weights
            self.peft = PeftModel.from_pretrained(self.base, str(source.path), adapter_name=name)
        else:
            self.peft.load_adapter(str(source.path), adapter_name=name)
        self.peft.eval()
        entry = LoadedAdapter(name, source, adapters.load_tokenizer(source),
                              (time.perf_counter() - started) * 1000, self._weight_bytes(name))
        self.loaded[name] = entry
        self.load_counts[name] += 1
        log.info("serve: loaded adapter %s (%s) in %.0f ms", name, source.label, entry.load_ms)
        # evicted after the new one is in: peft cannot disable adapters on a model that has none left
        while len(self.loaded) > self.max_adapters:
            self._evict(next(iter(self.loaded)))
        return entry

    def _evict(self, name: str) -> None:
        del self.loaded[name]     # only ever with another adapter still loaded (see _ensure)
        if self.peft.active_adapter == name:
            self.peft.set_adapter(next(reversed(self.loaded)))
        self.peft.delete_adapter(name)
        log.info("serve: evicted adapter %s", name)

    def _weight_bytes(self, name: str) -> int:
        marker = f".{name}."
        return sum(p.numel() * p.element_size() for n, p in self.peft.named_parameters() if marker in n)

    # ------------------------------------------------------------ requests

    def prepare(self, model_id: str, *, messages: list[dict] | None = None, prompt: str | None = None,
                temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
                stop: str | list[str] | None = None, seed: int | None = None) -> Prepared:
        """Check a request before anything is generated (every refusal is a ServeError)."""
        adapter = self.resolve(model_id)
        with self.lock:
            tokenizer = self._ensure(adapter).tokenizer if adapter else self.base_tokenizer
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or not all(stops):
            raise ServeError(f"stop takes at most {MAX_STOPS} non-empty strings", param="stop")
        settings = GenerationSettings(temperature=1.0 if temperature is None else temperature,
                                      top_p=1.0 if top_p is None else top_p,
                                      seed=42 if seed is None else seed,
                                      max_new_tokens=1 if max_tokens is None else max_tokens)
        if messages is not None:
            encoded = tokenizer.apply_chat_template(conversation(messages, settings), add_generation_prompt=True,
                                                    return_dict=True)
            prompt_tokens = len(encoded["input_ids"])
        else:
            prompt_tokens = len(tokenizer(prompt)["input_ids"])
        room = self.max_positions - prompt_tokens
        if max_tokens is None:
            settings.max_new_tokens = min(DEFAULT_MAX_TOKENS, max(room, 1))
        for name in ("temperature", "top_p", "max_new_tokens", "seed"):
            limits, value = GenerationSettings.__dataclass_fields__[name].metadata, getattr(settings, name)
            if not limits["min"] <= value <= limits["max"]:
                param = "max_tokens" if name == "max_new_tokens" else name
                raise ServeError(f"{param} must be from {limits['min']} to {limits['max']}, not {value}",
                                 param=param, code="invalid_value")
        if prompt_tokens + settings.max_new_tokens > self.max_positions:
            raise ServeError(f"this model's context is {self.max_positions} tokens, but the prompt has "
                             f"{prompt_tokens} and max_tokens asks for {settings.max_new_tokens} more; shorten the "
                             "prompt or lower max_tokens", param="messages" if messages is not None else "prompt",
                             code="context_length_exceeded")
        return Prepared(model_id, adapter, tokenizer, settings, prompt_tokens, stops, messages, prompt)

    def stream(self, request: Prepared):
        """Yield Pieces as the answer grows (the last has done=True); ends early at a stop string."""
        started = time.perf_counter()
        record = RequestRecord(request.model_id, request.prompt_tokens, 0, 0.0, None, "aborted")
        emitted, text, latest, cut = 0, "", "", None
        chat = request.messages is not None
        try:
            with self.lock:
                if request.adapter:     # loaded again if another request evicted it since prepare()
                    self._ensure(request.adapter).requests += 1
                    self.peft.set_adapter(request.adapter)
                model = self.base if self.peft is None else self.peft
                generate = stream_answer if chat else stream_prompt
                source = request.messages if chat else request.prompt
                stats = None
                for stats in generate(model, request.tokenizer, source, request.settings,
                                      use_adapter=request.adapter is not None):
                    if record.first_token_s is None and stats.tokens:
                        record.first_token_s = time.perf_counter() - started
                    latest = latest if stats.done else stats.text   # the last one is stripped: keep the raw
                    # a chat answer is stripped as the playground's; stream only what that answer will keep
                    text = latest.strip() if chat else latest
                    cut = _first_stop(text, request.stops)
                    if cut is not None:
                        text, stats.done = text[:cut], True
                    elif not stats.done:
                        text = text[:max(emitted, len(text) - _longest(request.stops) + 1)] if request.stops else text
                    if stats.done:
                        break
                    if len(text) > emitted:
                        yield Piece(text[emitted:])
                        emitted = len(text)
            record.completion_tokens = stats.tokens if stats else 0
            stopped = cut is not None or record.completion_tokens < request.settings.max_new_tokens
            record.finish_reason = "stop" if stopped else "length"
            yield Piece(text[emitted:], True, text, record.finish_reason, request.prompt_tokens,
                        record.completion_tokens)
        except Exception:
            record.finish_reason = "error"
            raise
        finally:
            record.seconds = time.perf_counter() - started
            self.requests.append(record)

    def complete(self, request: Prepared) -> Piece:
        """The whole answer (the last Piece of the stream)."""
        piece = None
        for piece in self.stream(request):
            pass
        return piece

    def stats(self) -> dict:
        """What a Serve tab shows: the base, the adapters in memory (least recently used first), recent requests."""
        return {"model": self.model_name, "base_load_ms": self.base_load_ms, "max_adapters": self.max_adapters,
                "adapters": [{"name": e.name, "label": e.source.label, "load_ms": e.load_ms,
                              "weight_bytes": e.weight_bytes, "requests": e.requests, "loads": self.load_counts[e.name]}
                             for e in self.loaded.values()],
                "requests": [asdict(record) for record in self.requests]}


def stream_prompt(model, tokenizer, prompt: str, settings: GenerationSettings, use_adapter: bool = True):
    """stream_answer for a raw prompt: the same generation, with the prompt tokenized as it is instead of
    through the chat template."""
    class RawPrompt:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def apply_chat_template(self, messages, **kwargs):
            return tokenizer(messages[-1]["content"], return_tensors="pt")

    yield from stream_answer(model, RawPrompt(), [{"role": "user", "content": prompt}], settings,
                             use_adapter=use_adapter)


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(stop) for stop in stops if stop in text]
    return min(found) if found else None


def _longest(stops: list[str]) -> int:
    return max(map(len, stops), default=1)
