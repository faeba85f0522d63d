"""Generation for comparisons: the same prompt, template and decoding for every column.

Greedy by default so differences between base and adapter come from the weights, not from sampling.
"""
from __future__ import annotations

from contextlib import nullcontext


def answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 64, use_adapter: bool = True) -> str:
    """One greedy answer; with use_adapter=False on a PEFT model the adapter is disabled (the base answers)."""
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    context = nullcontext() if use_adapter or not hasattr(model, "disable_adapter") else model.disable_adapter()
    model.eval()
    with context, torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
