"""llama.cpp itself (llama-cpp-python) on a tiny Llama's F16 GGUF as backend.export.gguf writes it: llama.cpp's
tokenizer gives the HF tokenizer's ids, its greedy answers are transformers' answers, and the Q4_K_M / Q6_K files
its quantiser makes hold real k-quant blocks, load, and pick the float model's next tokens outside near-ties.

The model is the tiny Llama widened to hidden size 256 (k-quants pack rows of 256 weights: at hidden 64
llama.cpp falls back to Q5_0 / Q8_0 for every matrix and no k-quant block would be tested), with weights already
float16 (so the F16 file holds exactly the float model) and initializer_range 0.05: at 0.2 a random network this
wide amplifies any rounding chaotically (Q6_K moved logits by 6.9 of a +-16 range), at 0.02 its logits are all
near-ties."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.export import llamacpp
from backend.export.gguf import _chat_ids, _greedy, _greedy_config, partial_path, write_gguf
from tests.backend.export.test_gguf import f16_exact_variant

needs_llamacpp = pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))

TEXTS = [
    "0 7 42 1234567 3.14159 2026-12-06 1,000,000",        # SmolLM2 splits digits one by one
    "a  b   c\t\td\n\ne \n \n  f      ",                  # whitespace runs, trailing spaces, blank lines
    "emoji 🙂🎉👩‍💻 and accents: café naïve Ελληνικά 日本語",  # multi-byte UTF-8, a ZWJ sequence
    "def square(x):\n    return x ** 2  # why not\n\nprint({'a': [1, 2]})\n",
    "<|im_start|>system\nYou are brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text right after a special token<|im_end|>",
]


PROMPTS = ["Who are you?", "What is the capital of Italy?", "Write one sentence about the sea."]
# Near-tie margins for the teacher-forced check of this model (logits span about -4..+4): where the float
# model's top two logits are closer than this, rounding may pick the other one. Measured on the 3 prompts
# (180 positions): Q6_K flipped the choice only where the gap was <= 0.17, Q4_K_M only where it was <= 0.36.
TIE_MARGINS = {"q6_k": 0.25, "q4_k_m": 0.5}


@pytest.fixture(scope="module")
def model_and_f16(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(the widened float16-exact tiny Llama's folder, its F16 GGUF written by backend.export.gguf)."""
    folder = f16_exact_variant(tiny_model_dir, tmp_path_factory.mktemp("llamacpp-model"), hidden_size=256,
                               intermediate_size=512, initializer_range=0.05)
    facts = write_gguf(folder, tmp_path_factory.mktemp("llamacpp-gguf") / "model-f16.gguf", "f16")
    return folder, Path(facts["path"])


def test_missing_binding_names_the_setup_command_in_one_sentence():
    message = str(llamacpp.LlamaCppMissing())
    assert llamacpp.SETUP_COMMAND in message and message.count(". ") == 0 and "\n" not in message


@needs_llamacpp
def test_tokens_equal_the_hf_tokenizer_including_chat_template_specials(model_and_f16):
    from transformers import AutoTokenizer

    folder, f16 = model_and_f16
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 12 + 30?"},
                                          {"role": "assistant", "content": "42 🙂"},
                                          {"role": "user", "content": "And  twice that?"}],
                                         add_generation_prompt=True, tokenize=False)
    texts = TEXTS + [chat]

    got = llamacpp.token_ids(f16, texts)

    expected = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    for text, ours, theirs in zip(texts, got, expected):
        assert ours == theirs, f"llama.cpp tokenizes {text!r} differently"
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in got[-1]   # parsed as one special token


@needs_llamacpp
def test_quantize_refuses_unknown_types_and_leaves_nothing_when_llamacpp_fails(tmp_path):
    out = tmp_path / "model-q4_k_m.gguf"
    with pytest.raises(llamacpp.LlamaCppError, match="not offered"):
        llamacpp.quantize(tmp_path / "in.gguf", out, "q2_k")
    torn = tmp_path / "torn.gguf"
    torn.write_bytes(b"GGUF this is not a model")
    with pytest.raises(llamacpp.LlamaCppError, match="could not quantise"):
        llamacpp.quantize(torn, out, "q4_k_m")
    assert not out.exists() and not partial_path(out).exists()


@needs_llamacpp
def test_greedy_answers_equal_transformers_on_three_chat_prompts(model_and_f16):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, f16 = model_and_f16
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    generation = _greedy_config(model, tokenizer, max_new_tokens=24)
    for prompt in PROMPTS:
        ids = _chat_ids(tokenizer, prompt)
        reference = _greedy(model, ids, generation).tolist()

        answer = llamacpp.greedy_answer(f16, ids.tolist(), max_new_tokens=24)

        assert answer == reference, f"{prompt!r}: llama.cpp {answer} != transformers {reference}"
        assert len(set(answer)) > 3   # a real answer to compare, not one token repeated


@needs_llamacpp
@pytest.mark.slow
@pytest.mark.parametrize("qtype,ftype,k_block", [("q4_k_m", 15, "Q4_K"), ("q6_k", 18, "Q6_K")])
def test_k_quants_load_and_pick_the_float_models_tokens_outside_near_ties(model_and_f16, tmp_path, qtype, ftype,
                                                                          k_block):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, f16 = model_and_f16
    out = tmp_path / f"model-{qtype}.gguf"

    facts = llamacpp.quantize(f16, out, qtype)

    assert facts["bytes"] < f16.stat().st_size / 2 and not partial_path(out).exists()
    reader = GGUFReader(out)
    assert int(reader.fields["general.file_type"].contents()) == ftype
    assert k_block in {tensor.tensor_type.name for tensor in reader.tensors}   # real k-quant blocks, not fallbacks
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    generation = _greedy_config(model, tokenizer, max_new_tokens=24)
    checked = disagreements = 0
    for prompt in PROMPTS:
        ids = _chat_ids(tokenizer, prompt)
        sequence = torch.cat([ids, _greedy(model, ids, generation)])
        with torch.no_grad():
            logits = model(sequence[None]).logits[0, :-1]      # position i chooses token i + 1
        top2 = logits.topk(2, dim=-1).values
        sure = ((top2[:, 0] - top2[:, 1]) >= TIE_MARGINS[qtype]).tolist()

        choices = llamacpp.next_token_choices(out, sequence.tolist())[:-1]

        for choice, wanted, is_sure in zip(choices, logits.argmax(-1).tolist(), sure):
            checked += is_sure
            disagreements += is_sure and choice != wanted
    assert checked >= 8 and disagreements == 0, f"{disagreements} of {checked} sure positions differ"


# ---------------------------------------------------------------- the export's check (llamacpp_check.verify)

@needs_llamacpp
def test_chat_prompt_renders_the_files_template_as_the_training_template_does(model_and_f16):
    from transformers import AutoTokenizer

    folder, f16 = model_and_f16
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and now?"}]

    rendered = llamacpp.chat_prompt(f16, messages)

    assert rendered == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")


@needs_llamacpp
def test_the_check_passes_a_true_f16_file_with_every_part_measured(model_and_f16):
    from backend.export import llamacpp_check

    folder, f16 = model_and_f16

    result = llamacpp_check.verify(f16, folder, PROMPTS)

    assert result["ok"], result["reason"]
    assert result["checker"] == "llama.cpp" and result["tokens_match"] and result["template_match"]
    assert result["answers_match"] == [True] * len(PROMPTS) and result["max_logit_diff"] < 0.05
    assert result["positions"] >= 3 * len(PROMPTS)


@needs_llamacpp
@pytest.mark.slow
def test_the_check_fails_a_file_of_other_weights_a_template_and_a_vocab_written_wrong(model_and_f16, tmp_path):
    import json
    import shutil

    from backend.export import llamacpp_check

    folder, f16 = model_and_f16
    # other weights behind the same tokenizer: the F16 file of a differently seeded model of the same shape
    other = f16_exact_variant(folder, tmp_path / "other", hidden_size=256, intermediate_size=512,
                              initializer_range=0.05, seed=2)
    other_f16 = Path(write_gguf(other, tmp_path / "other-f16.gguf", "f16")["path"])
    weights = llamacpp_check.verify(other_f16, folder, PROMPTS)
    assert not weights["ok"] and "greedy answers differ" in weights["reason"], weights["reason"]
    # the training template changed after the file was written: the file's template no longer renders it
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    config_path = edited / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    template_file = edited / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else config["chat_template"]
    template = template.replace("<|im_start|>assistant", "<|im_start|>bot")
    if template_file.exists():
        template_file.write_text(template)
    else:
        config_path.write_text(json.dumps({**config, "chat_template": template}))
    drifted = llamacpp_check.verify(f16, edited, PROMPTS)
    assert not drifted["ok"] and drifted["tokens_match"] and not drifted["template_match"]
    assert drifted["reason"].startswith("the chat template in the file renders another prompt"), drifted["reason"]
    # the training tokenizer pre-tokenizes another way (same vocabulary and merges): the file's ids differ
    vocab = tmp_path / "vocab"
    shutil.copytree(folder, vocab)
    tokenizer_json = json.loads((vocab / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"] = {"type": "Whitespace"}
    (vocab / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    split = llamacpp_check.verify(f16, vocab, PROMPTS)
    assert not split["ok"] and not split["tokens_match"]
    assert split["reason"].startswith("llama.cpp tokenizes") and "first difference at token" in split["reason"]


@needs_llamacpp
@pytest.mark.slow
def test_a_q4_k_m_check_passes_the_true_file_and_fails_one_of_other_weights(model_and_f16, tmp_path):
    from backend.export import llamacpp_check

    folder, f16 = model_and_f16
    true_q4 = llamacpp.quantize(f16, tmp_path / "true-q4_k_m.gguf", "q4_k_m")["path"]
    other = f16_exact_variant(folder, tmp_path / "other", hidden_size=256, intermediate_size=512,
                              initializer_range=0.05, seed=3)
    other_f16 = write_gguf(other, tmp_path / "other-f16.gguf", "f16")["path"]
    other_q4 = llamacpp.quantize(other_f16, tmp_path / "other-q4_k_m.gguf", "q4_k_m")["path"]

    true = llamacpp_check.verify(Path(true_q4), folder, PROMPTS)
    wrong = llamacpp_check.verify(Path(other_q4), folder, PROMPTS)

    facts = ("ok", "reason", "top1_agreement", "clear", "disagreements", "positions", "near_ties")
    assert true["ok"] and true["top1_agreement"] >= llamacpp_check.MIN_TOP1["q4_k_m"], {k: true[k] for k in facts}
    # the margin leaves few sure positions on this small model: the top-1 share is what catches the wrong file
    assert not wrong["ok"] and wrong["top1_agreement"] < 0.5, {k: wrong[k] for k in facts}
    assert "picks the merged model's next token at only" in wrong["reason"] or wrong["disagreements"], wrong
