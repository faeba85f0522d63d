"""A GGUF export checked by llama.cpp itself (the program Ollama, LM Studio and llama-cli run), against the merged
float model it was written from. Three checks, each decisive:

1. Tokenizer: llama.cpp's tokenizer (the file's vocab, merges and pre-tokenizer) gives the training tokenizer's
   ids on TOKEN_PROBES (digits, whitespace runs, emoji, code), on the tokenizer's special tokens written as text,
   on a rendered two-turn conversation, and on each prompt as the chat template renders it.
2. Chat template: the template embedded in the file, rendered the way llama-cpp-python's chat completion renders
   it, gives the training template's prompt for a conversation with a system turn, two user turns and an answer.
3. Answers: llama.cpp's greedy answers to the prompts against transformers' greedy answers on the merged float32
   model. F16: every answer identical and the teacher-forced logits within F16_TOLERANCE. Quantised types:
   teacher-forced on the float model's answers, llama.cpp picks the float model's next token at every position
   where the float model is sure (its top two logits at least TIE_MARGINS[type] apart); free-running answers are
   reported, not required to match (one flipped near-tie sends the rest of an answer elsewhere).

Why not transformers' GGUF loader (backend.export.gguf.verify_gguf, still the check when llama.cpp is not built):
it de-quantises to float and re-implements the file's reading; it cannot say what llama.cpp will do.
"""
from __future__ import annotations

import gc
from pathlib import Path

from backend.export import llamacpp
from backend.export.gguf import F16_TOLERANCE, _answer_and_logits, _chat_ids, _greedy_config, _qtype_of

TOKEN_PROBES = (
    "0 7 42 1234567 3.14159 2026-12-06 1,000,000",
    "a  b   c\t\td\n\ne \n \n  f      ",
    "emoji 🙂🎉👩‍💻 and accents: café naïve Ελληνικά 日本語",
    "def square(x):\n    return x ** 2  # why not\n\nprint({'a': [1, 2]})\n",
)
CONVERSATION = [{"role": "system", "content": "You are brief."},
                {"role": "user", "content": "What is 12 + 30?"},
                {"role": "assistant", "content": "42."},
                {"role": "user", "content": "And twice that?"}]
# Near-tie margins (logits) of the teacher-forced check per quantised type: where the float model's top two
# logits are closer than this, the type's rounding may pick the other one. Measured on the bundled SmolLM2-135M
# in llama.cpp (8 prompts, 205 answer positions; its hidden size 576 is no multiple of 256, so most matrices
# fall back from the k-quant to Q8_0 / Q5_1 / Q5_0): the widest top-two gap at which a type flipped a choice
# was 0.21 (Q8_0), 0.53 (Q6_K), 1.91 (Q5_K_M and Q4_K_M); top-1 agreement 96 %, 93 %, 85 %, 87 %.
TIE_MARGINS = {"q8_0": 1.0, "q6_k": 1.0, "q5_k_m": 3.0, "q4_k_m": 3.0}
# At margin 3.0 most positions of a 135M model are near-ties (49 of 57 on the check prompts), so a quantised type
# must also pick the float model's token at most positions where its top two are at least SOFT_MARGIN apart
# (where a wrong file picks it about as often as chance); MIN_TOP1 of them, measured in the note of issue 19.
SOFT_MARGIN = 0.5
MIN_TOP1 = {"q8_0": 0.9, "q6_k": 0.9, "q5_k_m": 0.8, "q4_k_m": 0.8}


def verify(gguf_path: Path, model_dir: Path, prompts: list[str], max_new_tokens: int = 24,
           lora_path: Path | None = None, load_reference=None) -> dict:
    """The three checks (see the module docstring) as one result dict; result["ok"] and a one-sentence reason.

    model_dir holds the tokenizer (and, by default, the float model) the file is compared with. With lora_path,
    llama.cpp runs the file with that LoRA GGUF applied, and `load_reference()` returns the float model to
    compare with (the unmerged peft model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, model_dir = Path(gguf_path), Path(model_dir)
    qtype = _qtype_of(gguf_path)
    result = {"checker": "llama.cpp", "qtype": qtype, "lora": Path(lora_path).name if lora_path else None, "prompts": list(prompts), "answers_match": [],
              "gguf_answers": [], "reference_answers": [], "max_logit_diff": None, "tolerance": None,
              "tie_margin": TIE_MARGINS.get(qtype), "disagreements": 0, "positions": 0, "near_ties": 0,
              "top1_agreement": None, "min_top1": MIN_TOP1.get(qtype), "agreeing": 0, "clear": 0,
              "soft_margin": SOFT_MARGIN,
              "tokens_match": False, "template_match": False, "ok": False, "reason": ""}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference_inputs = [_chat_ids(tokenizer, prompt).tolist() for prompt in prompts]

    problem = _token_problem(gguf_path, tokenizer, prompts)
    result["tokens_match"] = problem is None
    if problem is None:
        problem = _template_problem(gguf_path, tokenizer)
        result["template_match"] = problem is None
    if problem is not None:
        result["reason"] = problem
        return result

    model = (load_reference() if load_reference is not None
             else AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    generation = _greedy_config(model, tokenizer, max_new_tokens)
    reference = [_answer_and_logits(model, torch.tensor(ids), generation) for ids in reference_inputs]
    del model
    gc.collect()

    margin = result["tie_margin"]
    diffs = []
    for ids, (ref_answer, ref_logits) in zip(reference_inputs, reference):
        ref_answer = ref_answer.tolist()
        answer = llamacpp.greedy_answer(gguf_path, ids, max_new_tokens, lora_path=lora_path)
        result["answers_match"].append(answer == ref_answer)
        result["gguf_answers"].append(tokenizer.decode(answer, skip_special_tokens=True))
        result["reference_answers"].append(tokenizer.decode(ref_answer, skip_special_tokens=True))
        if not ref_answer:
            continue
        logits = torch.from_numpy(llamacpp.next_token_logits(gguf_path, ids + ref_answer, lora_path=lora_path)
                                  [len(ids) - 1: len(ids) - 1 + len(ref_answer)])
        diffs.append(float((logits - ref_logits).abs().max()))
        top2 = ref_logits.topk(2, dim=-1).values
        sure = (top2[:, 0] - top2[:, 1]) >= (margin if margin is not None else 0.0)
        flipped = logits.argmax(-1) != torch.tensor(ref_answer)
        result["positions"] += len(ref_answer)
        result["near_ties"] += int((~sure).sum())
        result["disagreements"] += int((flipped & sure).sum())
        clear = (top2[:, 0] - top2[:, 1]) >= SOFT_MARGIN
        result["agreeing"] += int((~flipped & clear).sum())
        result["clear"] += int(clear.sum())
    result["max_logit_diff"] = max(diffs) if diffs else None
    if result["clear"]:
        result["top1_agreement"] = result["agreeing"] / result["clear"]
    if qtype == "f16":
        result["tolerance"] = F16_TOLERANCE
    result["ok"], result["reason"] = _verdict(result)
    return result


def _verdict(result: dict) -> tuple[bool, str]:
    qtype, matched = result["qtype"], result["answers_match"]
    if qtype == "f16":
        if not all(matched):
            return False, (f"llama.cpp's greedy answers differ from the merged model's on {matched.count(False)} "
                           f"of {len(matched)} prompts")
        if result["max_logit_diff"] is not None and result["max_logit_diff"] > F16_TOLERANCE:
            return False, (f"llama.cpp's logits differ from the merged model's by up to "
                           f"{result['max_logit_diff']:.3g}, above the tolerance {F16_TOLERANCE}")
        return True, "llama.cpp's greedy answers equal the merged model's"
    if result["tie_margin"] is None:
        return False, f"there is no near-tie margin for the GGUF type '{qtype}' (not one the studio writes)"
    if result["disagreements"]:
        return False, (f"the {qtype.upper()} model picks another next token than the merged model at "
                       f"{result['disagreements']} answer position(s) where the merged model is not near a tie "
                       f"(margin {result['tie_margin']:g})")
    if result["top1_agreement"] is not None and result["top1_agreement"] < result["min_top1"]:
        return False, (f"the {qtype.upper()} model picks the merged model's next token at only "
                       f"{100 * result['top1_agreement']:.0f} % of the answer positions where the merged model's top "
                       f"two logits are at least {SOFT_MARGIN:g} apart (at least {100 * result['min_top1']:.0f} % "
                       f"expected for {qtype.upper()})")
    return True, (f"{qtype.upper()} picks the merged model's next token at every answer position outside "
                  "near-ties")


def _token_problem(gguf_path: Path, tokenizer, prompts: list[str]) -> str | None:
    """None when llama.cpp tokenizes every probe as the training tokenizer does, else one sentence naming the
    first text that differs and where."""
    texts = list(TOKEN_PROBES)
    specials = [t for t in tokenizer.all_special_tokens if t]
    if specials:
        texts.append("text " + " and ".join(specials) + " text")
    texts.append(_render(tokenizer, add_generation_prompt=True))
    texts += [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True) for prompt in prompts]
    expected = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    got = llamacpp.token_ids(gguf_path, texts)
    for text, want, have in zip(texts, expected, got):
        if list(want) != list(have):
            at = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            return (f"llama.cpp tokenizes {_clip(text)!r} into other ids than the training tokenizer (first "
                    f"difference at token {at}: {list(want[at:at + 3])} vs {list(have[at:at + 3])}), so the "
                    "file's vocabulary, merges or pre-tokenizer are written wrong")
    return None


def _template_problem(gguf_path: Path, tokenizer) -> str | None:
    """None when the file's chat template renders the training template's prompt, else one sentence."""
    expected = _render(tokenizer, add_generation_prompt=True)
    try:
        rendered = llamacpp.chat_prompt(gguf_path, _conversation(tokenizer), add_generation_prompt=True)
    except llamacpp.LlamaCppError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - a template jinja2 cannot render is the finding
        return f"llama.cpp cannot render the chat template in the file ({type(error).__name__}: {error})"
    if rendered != expected:
        at = next((i for i, (a, b) in enumerate(zip(expected, rendered)) if a != b), min(len(expected),
                                                                                         len(rendered)))
        return (f"the chat template in the file renders another prompt than the training template (first "
                f"difference at character {at}: {expected[at:at + 20]!r} vs {rendered[at:at + 20]!r})")
    return None


def _conversation(tokenizer) -> list[dict]:
    """CONVERSATION, without its system turn for templates that refuse one (Gemma's raise on it)."""
    try:
        tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
        return CONVERSATION
    except Exception:  # noqa: BLE001 - jinja2's TemplateError from raise_exception(...)
        return CONVERSATION[1:]


def _render(tokenizer, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(_conversation(tokenizer), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
