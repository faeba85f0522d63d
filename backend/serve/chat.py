"""Generation for comparisons: the same conversation, template, decoding settings and seed for every column.

Greedy by default so differences between base, adapter and merged come from the weights, not from sampling.
`stream_answer` yields the growing answer with its timing (time to first token, tokens/s) so the playground
can show tokens as they arrive; `answer` is the same thing run to the end.
"""
from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace


@dataclass
class GenerationSettings:
    """Decoding settings shared by every column (one field = one control in the Playground tab)."""
    system_prompt: str = field(default="", metadata={
        "help": "Optional system message put before the conversation in every column."})
    max_new_tokens: int = field(default=128, metadata={
        "help": "Longest answer in tokens.", "min": 1, "max": 4096})
    temperature: float = field(default=0.0, metadata={
        "help": "0 = greedy (differences come from the weights only); above 0 samples.", "min": 0.0, "max": 2.0})
    top_p: float = field(default=1.0, metadata={
        "help": "Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.",
        "min": 0.05, "max": 1.0})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "Above 1 discourages repeating tokens already in the text (1 = off).", "min": 1.0, "max": 2.0})
    seed: int = field(default=42, metadata={
        "help": "Random seed, reset before every column so sampled answers are comparable.", "min": 0,
        "max": 2 ** 31 - 1})
    tools: str = field(default="", metadata={
        "help": "Functions the model may call: a JSON list of schemas, as in a training row's tools column "
                "(filled from the job's data when it has tools). Passed to the chat template as in training; "
                "empty = none."})

    def problems(self) -> list[str]:
        out = []
        for f in fields(self):
            value, low, high = getattr(self, f.name), f.metadata.get("min"), f.metadata.get("max")
            if low is not None and not (low <= value <= high):
                out.append(f"{f.name}: {value} is outside {low} to {high}")
        try:
            self.tool_schemas()
        except ValueError as error:
            out.append(f"tools: {error}")
        return out

    def tool_schemas(self) -> list[dict] | None:
        """The tools as the chat template takes them (None when empty); ValueError says what is wrong."""
        import json

        from backend.data.report import Problem
        from backend.data.toolcalls import normalise_tools

        if not str(self.tools or "").strip():
            return None
        try:
            tools = json.loads(self.tools)
        except ValueError as error:
            raise ValueError(f"not valid JSON ({error.msg} at character {error.pos}); give a list of function "
                             "schemas") from None
        tools = [tools] if isinstance(tools, dict) else tools
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ValueError("give a JSON list of function schema objects")
        problems: list[Problem] = []
        tools = normalise_tools(tools, problems)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise ValueError(f"{errors[0].field}: {errors[0].message}")
        return tools

    def generate_kwargs(self, tokenizer) -> dict:
        kwargs = {"max_new_tokens": int(self.max_new_tokens), "pad_token_id": tokenizer.pad_token_id,
                  "repetition_penalty": float(self.repetition_penalty)}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class AnswerStats:
    text: str = ""
    tokens: int = 0
    first_token_s: float | None = None
    seconds: float = 0.0
    done: bool = False

    @property
    def tokens_per_second(self) -> float | None:
        decode_s = self.seconds - (self.first_token_s or 0.0)
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else None

    def summary(self) -> str:
        ttft = "" if self.first_token_s is None else f"first token {self.first_token_s * 1000:.0f} ms · "
        rate = "" if self.tokens_per_second is None else f"{self.tokens_per_second:.1f} tok/s · "
        return f"{ttft}{rate}{self.tokens} tokens"


def conversation(messages: list[dict], settings: GenerationSettings) -> list[dict]:
    """The messages with the system prompt in front (when one is set and the conversation has none)."""
    if settings.system_prompt.strip() and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": settings.system_prompt.strip()}, *messages]
    return list(messages)


def prompt_inputs(tokenizer, messages: list[dict], device, tools: list[dict] | None = None):
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True, **kwargs).to(device)


def stream_answer(model, tokenizer, messages: list[dict], settings: GenerationSettings | None = None,
                  use_adapter: bool = True, lock: threading.Lock | None = None):
    """Yield AnswerStats as tokens arrive (the last one has done=True).

    With use_adapter=False on a PEFT model the adapter is disabled: the base answers on the same weights.
    `lock` serialises generations that share one model (disabling the adapter is model-wide state).
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

    settings = settings or GenerationSettings()
    inputs = prompt_inputs(tokenizer, conversation(messages, settings), model.device, settings.tool_schemas())
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    disabled = nullcontext() if use_adapter or not hasattr(model, "disable_adapter") else model.disable_adapter()
    counter = _TokenCounter()
    stop = _StopFlag()
    failure: list[BaseException] = []

    def generate():
        try:
            with disabled, torch.no_grad():
                torch.manual_seed(settings.seed)
                model.generate(**inputs, streamer=streamer, logits_processor=LogitsProcessorList([counter]),
                               stopping_criteria=StoppingCriteriaList([stop]), **settings.generate_kwargs(tokenizer))
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(error)
            streamer.end()

    stats = AnswerStats()
    with lock or nullcontext():
        model.eval()
        started = time.perf_counter()
        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                stats.seconds = time.perf_counter() - started
                if stats.first_token_s is None and counter.count:
                    stats.first_token_s = stats.seconds
                stats.text += piece
                stats.tokens = counter.count
                if piece:
                    yield replace(stats)   # a snapshot: the caller may keep them
        finally:
            # the caller may stop early (a closed browser tab): stop generating before the model is released
            stop.set()
            worker.join()
    if failure:
        raise failure[0]
    stats.seconds = time.perf_counter() - started
    stats.tokens = counter.count
    if stats.first_token_s is None and counter.count:
        stats.first_token_s = stats.seconds
    stats.text = stats.text.strip()
    stats.done = True
    yield stats


def answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 64, use_adapter: bool = True,
           settings: GenerationSettings | None = None) -> str:
    """One answer run to the end (greedy unless settings say otherwise)."""
    settings = settings or GenerationSettings(max_new_tokens=max_new_tokens)
    last = AnswerStats()
    for last in stream_answer(model, tokenizer, messages, settings, use_adapter=use_adapter):
        pass
    return last.text


class _StopFlag:
    """A stopping criterion the consumer can raise from another thread."""

    def __init__(self):
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def __call__(self, input_ids, scores, **kwargs):
        import torch
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenCounter:
    """A logits processor that only counts generated tokens (called once per new token)."""

    def __init__(self):
        self.count = 0

    def __call__(self, input_ids, scores):
        self.count += 1
        return scores
