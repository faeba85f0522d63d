"""The serving engine: one base model loaded once, the adapters of many jobs on it by name.

An adapter is loaded on first use with peft's `load_adapter` under its model id (the job id, or
`JOB@checkpoint-N` for a job's complete checkpoint), kept in an LRU of `max_adapters`, and evicted with
`delete_adapter`; the base is never loaded twice. The base answers on the same weights, as peft's "__base__"
row of a batch. A request is prepared (model resolved, prompt tokenized, settings checked) apart from its generation;
`stream` hands it to the batching scheduler (backend/serve/batching.py), which runs concurrent requests for
different adapters and the base in one `generate` call with peft's per-row `adapter_names`. Generation uses the
playground's settings, template and text streaming, so a chat answer equals the playground's (greedy).

It records, for a later Serve tab, each adapter's load time and weight bytes and each request's latency and
token counts, and how many batches ran at each size (`Engine.stats()`).
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
from backend.serve.chat import GenerationSettings, conversation

log = logging.getLogger("lorastudio")

DEFAULT_MAX_ADAPTERS = 4
DEFAULT_MAX_BATCH = 8         # requests in one generate call
TOKENIZERS_KEPT = 16          # tokenizers of adapters not in memory, kept for prepare()
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
    input_ids: list[int] = field(default_factory=list)   # the prompt as the model reads it
    seeded: bool = False                 # the client named a seed (a sampled request then runs alone)
    mixable: bool = True                 # may share a batch with other adapters (not DoRA: peft refuses)


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
                 max_adapters: int = DEFAULT_MAX_ADAPTERS, max_batch: int = DEFAULT_MAX_BATCH):
        if max_adapters < 1 or max_batch < 1:
            raise ServeError(f"max_adapters and max_batch must be at least 1, not {max_adapters} and {max_batch}")
        self.max_adapters = max_adapters
        # guards the bookkeeping below, read by request threads; the model itself is only ever touched by the
        # scheduler's thread (and by __init__ before it starts), so no lock is held across a generation
        self.lock = threading.Lock()
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()   # least recently used first
        self.tokenizers: OrderedDict[str, object] = OrderedDict()      # of adapters prepared but not loaded
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
        self.scheduler = None
        for name, _ in first:
            self.resolve(name)          # refuses an adapter of another base before anything is served
            self._ensure(name)
        from backend.serve.batching import Scheduler   # here: `lorastudio --help` imports this module

        generation = self.base.generation_config
        eos = generation.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad_id = self.base_tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else next(iter(eos_ids), 0)   # masked out: any id does
        self.scheduler = Scheduler(self._model_for, self._fits, pad_id, eos_ids, max_batch=max_batch,
                                   max_adapters=max_adapters)

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
        folder = Path(spec).expanduser()
        if folder.is_dir():   # a folder: compared as a path, not re-imported (that hashes its weights) per request
            return folder.resolve() == Path(self.info.path).resolve()
        try:   # a registry name; a job never names a .gguf after training, so nothing converts here
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
        if methods.spec(job.config.method).peft_type == "PROMPT_TUNING":
            # peft keeps prompt-learning and LoRA adapters in separate models, and this engine serves every
            # adapter on one shared base; prompt tuning needs its own PeftModel per job
            raise ServeError(f"job {job.id} is a prompt tuning job: its virtual tokens cannot share the served base "
                             "with other adapters; try it in the Playground or load its exported adapter with peft",
                             param="model", code="adapter_not_servable")
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
            raise ServeError(f"job {job.id} is a {methods.spec(job.config.method).label} job, whose checkpoints hold "
                             "the adapter for the residual "
                             "base until it finishes; serve its final adapter once it completes",
                             param="model", code="adapter_not_final")
        label = f"{checkpoint} (job {job.status})"
        return job.id, adapters.AdapterSource(job.id, folder, label, job.config, job.status)

    def _model_for(self, rows) -> tuple[object, list[str] | None]:
        """On the scheduler's thread, before a batch: its adapters loaded; the model and its per-row adapter names
        (None: no adapter was ever loaded, or the batch is one DoRA adapter's, which runs as the active one)."""
        names = {row.request.adapter for row in rows if row.request.adapter}
        for name in names:
            self._ensure(name).requests += sum(row.request.adapter == name for row in rows)
        if self.peft is None:
            return self.base, None
        if not rows[0].request.mixable:
            self.peft.set_adapter(rows[0].request.adapter)
            return self.peft, None
        return self.peft, [row.adapter_row_name for row in rows]

    def _fits(self, rows) -> bool:
        """Whether left-padded prompts and the longest answer fit the context together."""
        longest_prompt = max(len(row.request.input_ids) for row in rows)
        return longest_prompt + max(row.request.settings.max_new_tokens for row in rows) <= self.max_positions

    def _tokenizer(self, name: str):
        """An adapter's tokenizer for prepare(), without loading its weights (that is the scheduler's thread's)."""
        with self.lock:
            entry = self.loaded.get(name)
            if entry is not None:
                return entry.tokenizer
            if name in self.tokenizers:
                self.tokenizers.move_to_end(name)
                return self.tokenizers[name]
        tokenizer = adapters.load_tokenizer(self._source_for(name)[1])
        with self.lock:
            self.tokenizers[name] = tokenizer
            while len(self.tokenizers) > TOKENIZERS_KEPT:
                self.tokenizers.popitem(last=False)
        return tokenizer

    def _ensure(self, name: str) -> LoadedAdapter:
        """The adapter loaded and most recently used; loads it (evicting the least recently used that no queued or
        running request uses) when needed. Only on the scheduler's thread, or in __init__ before it starts."""
        with self.lock:
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
        with self.lock:
            tokenizer = self.tokenizers.pop(name, None)
        entry = LoadedAdapter(name, source, tokenizer or adapters.load_tokenizer(source),
                              (time.perf_counter() - started) * 1000, self._weight_bytes(name))
        with self.lock:
            self.loaded[name] = entry
            self.load_counts[name] += 1
        log.info("serve: loaded adapter %s (%s) in %.0f ms", name, source.label, entry.load_ms)
        # evicted after the new one is in: peft cannot disable adapters on a model that has none left. Adapters
        # that waiting or running requests use stay, even past max_adapters for a while: evicting one would only
        # load it again for them (a batch itself holds at most max_adapters)
        in_use = self.scheduler.adapters_in_use() if self.scheduler else set()
        for old in [old for old in self.loaded if old != name and old not in in_use]:
            if len(self.loaded) <= self.max_adapters:
                break
            self._evict(old)
        return entry

    def _evict(self, name: str) -> None:
        with self.lock:
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
                stop: str | list[str] | None = None, seed: int | None = None,
                tools: list[dict] | None = None) -> Prepared:
        """Check a request before anything is generated (every refusal is a ServeError). `tools`: function
        schemas for the chat template, as the playground passes them."""
        adapter = self.resolve(model_id)
        tokenizer = self._tokenizer(adapter) if adapter else self.base_tokenizer
        method = methods.spec(self._source_for(adapter)[1].config.method) if adapter else None
        mixable = not (method and (method.dora or method.peft_type != "LORA"))   # peft mixes LoRA adapters only
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or not all(stops):
            raise ServeError(f"stop takes at most {MAX_STOPS} non-empty strings", param="stop")
        settings = GenerationSettings(temperature=1.0 if temperature is None else temperature,
                                      top_p=1.0 if top_p is None else top_p,
                                      seed=42 if seed is None else seed,
                                      max_new_tokens=1 if max_tokens is None else max_tokens)
        if messages is not None:
            extra = {"tools": tools} if tools else {}
            input_ids = list(tokenizer.apply_chat_template(conversation(messages, settings), add_generation_prompt=True,
                                                           return_dict=True, **extra)["input_ids"])
        else:
            input_ids = list(tokenizer(prompt)["input_ids"])
        prompt_tokens = len(input_ids)
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
        return Prepared(model_id, adapter, tokenizer, settings, prompt_tokens, stops, messages, prompt, input_ids,
                        seeded=seed is not None, mixable=mixable)

    def stream(self, request: Prepared):
        """Yield Pieces as the answer grows (the last has done=True); ends early at a stop string. Closing the
        generator (a client that left) cancels the request's row in its batch at once."""
        from backend.serve.batching import FINISHED

        started = time.perf_counter()
        record = RequestRecord(request.model_id, request.prompt_tokens, 0, 0.0, None, "aborted")
        emitted, raw, text, cut = 0, "", "", None
        row = self.scheduler.submit(request)
        try:
            while cut is None:
                event = row.events.get()
                if isinstance(event, BaseException):
                    raise event
                if event is FINISHED:
                    break
                raw += event
                # a chat answer is stripped as the playground's; stream only what that answer will keep
                text = raw.strip() if request.messages is not None else raw
                cut = _first_stop(text, request.stops)
                if cut is not None:
                    text = text[:cut]
                    break
                # a stop string may be arriving: hold back what could be its start
                shown = text[:max(emitted, len(text) - _longest(request.stops) + 1)] if request.stops else text
                if len(shown) > emitted:
                    yield Piece(shown[emitted:])
                    emitted = len(shown)
            row.cancel()     # a cut answer needs no more tokens
            record.completion_tokens = len(row.tokens)
            if row.first_token_at is not None:
                record.first_token_s = row.first_token_at - started
            stopped = cut is not None or record.completion_tokens < request.settings.max_new_tokens
            record.finish_reason = "stop" if stopped else "length"
            yield Piece(text[emitted:], True, text, record.finish_reason, request.prompt_tokens,
                        record.completion_tokens)
        except Exception:
            record.finish_reason = "error"
            raise
        finally:
            row.cancel()     # also when the client left: its row stops at the batch's next step
            record.seconds = time.perf_counter() - started
            self.requests.append(record)

    def close(self) -> None:
        """Stop the scheduler's thread (it holds this engine, and with it the model, while it runs)."""
        self.scheduler.close()

    def complete(self, request: Prepared) -> Piece:
        """The whole answer (the last Piece of the stream)."""
        piece = None
        for piece in self.stream(request):
            pass
        return piece

    def stats(self) -> dict:
        """What a Serve tab shows: the base, the adapters in memory (least recently used first), recent requests."""
        with self.lock:
            loaded = [{"name": e.name, "label": e.source.label, "load_ms": e.load_ms, "weight_bytes": e.weight_bytes,
                       "requests": e.requests, "loads": self.load_counts[e.name]} for e in self.loaded.values()]
        return {"model": self.model_name, "base_load_ms": self.base_load_ms, "max_adapters": self.max_adapters,
                "adapters": loaded, "requests": [asdict(record) for record in list(self.requests)],
                # how many generate calls ran with each number of requests in them
                "batches": {"count": sum(self.scheduler.batch_sizes.values()),
                            "sizes": dict(sorted(self.scheduler.batch_sizes.items()))}}


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(stop) for stop in stops if stop in text]
    return min(found) if found else None


def _longest(stops: list[str]) -> int:
    return max(map(len, stops), default=1)
