"""Batched generation and teacher-forced scoring, the two model calls every section of the report makes.

- `generate(ctx, variant, prompts)`: greedy (or the playground's settings) answers for many conversations at
  once, left-padded, the same chat template, system prompt and seed as the playground. One batch of eight
  costs about what one answer does on a CPU, which is what makes a 100-row report affordable.
- `score(ctx, variant, prompts, answers)`: the log-probability of each given answer after its prompt, token by
  token (the answer's tokens only; the prompt carries no loss), right-padded batches. `keep_logits=True` also
  returns the answer positions' log-softmax rows, for the KL divergence between two variants.
"""
from __future__ import annotations

from dataclasses import dataclass

from backend.evaluate.common import EvalContext, Variant


@dataclass
class Scored:
    logprobs: list[float]                # one per answer token
    logsoftmax: object = None            # tensor [answer tokens, vocab] when asked for

    @property
    def tokens(self) -> int:
        return len(self.logprobs)

    @property
    def loss(self) -> float | None:
        """Mean negative log-likelihood per answer token (None for an empty answer)."""
        return -sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


def _conversation(ctx: EvalContext, messages: list[dict]) -> list[dict]:
    from backend.serve.chat import conversation
    return conversation(messages, ctx.settings)


def _tools(tools: list | None) -> dict:
    """The chat template's tools argument: a row's function schemas, as training rendered them."""
    return {"tools": tools} if tools else {}


def prompt_ids(ctx: EvalContext, messages: list[dict], tools: list | None = None) -> list[int]:
    rendered = ctx.tokenizer.apply_chat_template(_conversation(ctx, messages), add_generation_prompt=True,
                                                 tokenize=True, return_dict=True, **_tools(tools))
    return list(rendered["input_ids"])


def answer_ids(ctx: EvalContext, messages: list[dict], answer: str,
               tools: list | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer's tokens as the template renders the assistant turn, up to and
    including its end-of-turn token, so the loss covers exactly what the model would have to generate."""
    prompt = prompt_ids(ctx, messages, tools)
    full = ctx.tokenizer.apply_chat_template(_conversation(ctx, messages) + [{"role": "assistant", "content": answer}],
                                             tokenize=True, return_dict=True, **_tools(tools))["input_ids"]
    full = list(full)
    if full[:len(prompt)] != prompt:      # a template that rewrites earlier turns: fall back to plain tokens
        tail = ctx.tokenizer(answer, add_special_tokens=False)["input_ids"]
        eos = ctx.tokenizer.eos_token_id
        return prompt, list(tail) + ([eos] if eos is not None else [])
    tail = full[len(prompt):]
    # keep the end-of-turn token, drop what the template adds after it (a newline)
    end_ids = {i for i in (ctx.tokenizer.eos_token_id, ctx.tokenizer.convert_tokens_to_ids("<|im_end|>"))
               if isinstance(i, int) and i >= 0}
    for position, token in enumerate(tail):
        if token in end_ids:
            return prompt, tail[:position + 1]
    return prompt, tail


def batches(items: list, size: int):
    for start in range(0, len(items), max(1, size)):
        yield start, items[start:start + max(1, size)]


def generate(ctx: EvalContext, variant: Variant, prompts: list[list[dict]], progress=None,
             batch_size: int | None = None, tools: list | None = None) -> list[str]:
    """One answer per conversation, generated in left-padded batches (batch_size 1 = one at a time).
    tools: one entry per conversation (None or its function schemas), passed to the chat template."""
    return [ctx.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in generate_ids(ctx, variant, prompts, progress, batch_size, tools)]


def generate_ids(ctx: EvalContext, variant: Variant, prompts: list[list[dict]], progress=None,
                 batch_size: int | None = None, tools: list | None = None) -> list[list[int]]:
    """The generated token ids of each answer, up to and including its end token (padding removed)."""
    import torch

    tokenizer = ctx.tokenizer
    size = batch_size or ctx.batch_size
    answers: list[list[int]] = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with variant.active() as model, torch.no_grad():
            model.eval()
            for start, chunk in batches(prompts, size):
                ids = [prompt_ids(ctx, messages, tools[start + i] if tools else None)
                       for i, messages in enumerate(chunk)]
                width = max(len(row) for row in ids)
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=model.device)
                attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids],
                                         device=model.device)
                torch.manual_seed(ctx.settings.seed)
                output = model.generate(input_ids=input_ids, attention_mask=attention,
                                        **ctx.settings.generate_kwargs(tokenizer))
                stops = _stop_ids(model, tokenizer)
                for row in output[:, width:].tolist():
                    ended = next((i for i, token in enumerate(row) if token in stops), None)
                    answers.append(row if ended is None else row[:ended + 1])
                if progress:
                    progress(len(chunk))
    finally:
        tokenizer.padding_side = padding_side
    return answers


def _stop_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer (generation config's eos ids and the tokenizer's): after one, generate()
    pads a finished row of the batch, so everything past it is dropped."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in [*ids, tokenizer.eos_token_id] if isinstance(i, int)}


def score(ctx: EvalContext, variant: Variant, prompts: list[list[dict]], answers: list[str], progress=None,
          keep_logits: bool = False, max_length: int | None = None, tools: list | None = None) -> list[Scored]:
    """Teacher-forced log-probabilities of each answer after its prompt (right-padded batches).
    tools: one entry per conversation (None or its function schemas), passed to the chat template."""
    import torch

    limit = max_length or int(getattr(ctx.config.training, "max_length", 2048) or 2048)
    pairs = []
    for index, (messages, answer) in enumerate(zip(prompts, answers)):
        prompt, tail = answer_ids(ctx, messages, answer, tools[index] if tools else None)
        prompt = prompt[-max(1, limit - len(tail)):]      # cut the prompt's start, never the answer
        pairs.append((prompt, tail[:limit]))
    results: list[Scored] = []
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    with variant.active() as model, torch.no_grad():
        model.eval()
        for _, chunk in batches(pairs, ctx.batch_size):
            rows = [p + a for p, a in chunk]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
            attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            for index, (prompt, tail) in enumerate(chunk):
                if not tail:
                    results.append(Scored([], None))
                    continue
                start = len(prompt) - 1                          # the logit at t predicts token t + 1
                rows_logits = logits[index, start:start + len(tail)]
                log_soft = torch.log_softmax(rows_logits, dim=-1)
                target = torch.tensor(tail, device=log_soft.device)
                picked = log_soft.gather(1, target[:, None])[:, 0]
                results.append(Scored([float(x) for x in picked], log_soft.cpu() if keep_logits else None))
            if progress:
                progress(len(chunk))
    return results
