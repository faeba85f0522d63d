"""A PEFT LoRA adapter exported by llama.cpp's own converter (convert_lora_to_gguf.py) as a LoRA GGUF: the file
says it is a LoRA adapter, and the base model's F16 GGUF with it applied in llama.cpp (as `--lora` does) gives
the unmerged peft model's greedy answers, which differ from the base model's; adapters llama.cpp cannot hold and
broken adapter folders fail with one sentence.

The model is the widened float16-exact tiny Llama of test_llamacpp.py (hidden 256, initializer_range 0.05); the
adapter's A and B are rounded to float16 too, so the F16 LoRA GGUF holds exactly the adapter peft runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from backend.export import llamacpp, llamacpp_lora
from backend.export.gguf import _chat_ids, _greedy, _greedy_config, partial_path
from tests.backend.export.test_llamacpp import model_and_f16  # noqa: F401 - the widened tiny Llama and its F16

needs_llamacpp = pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
needs_converter = pytest.mark.skipif(not llamacpp_lora.converter_available(),
                                     reason=str(llamacpp_lora.ConverterMissing()))

PROMPTS = ["Who are you?", "What is the capital of Italy?", "Write one sentence about the sea."]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, folder: Path, seed: int = 3, **lora_options) -> Path:
    """A LoRA adapter on the model in base_dir with random float16-exact A and B (B non-zero, so it changes the
    answers), saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": TARGETS, "task_type": "CAUSAL_LM",
                           **lora_options})
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
            if "lora_" in name:
                parameter.copy_(parameter.half().float())
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def peft_answers(base_dir: Path, adapter_dir: Path, prompts: list[str], max_new_tokens: int = 24):
    """(the tokenized prompts, the unmerged peft model's greedy answers to them), transformers float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      adapter_dir).eval()
    generation = _greedy_config(model, tokenizer, max_new_tokens=max_new_tokens)
    prompt_ids = [_chat_ids(tokenizer, prompt) for prompt in prompts]
    return [ids.tolist() for ids in prompt_ids], [_greedy(model, ids, generation).tolist() for ids in prompt_ids]


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message and message.count(". ") == 0, message


def test_missing_converter_names_the_setup_command_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv(llamacpp_lora.CONVERTER_ENV, str(tmp_path / "nowhere"))
    assert not llamacpp_lora.converter_available()
    with pytest.raises(llamacpp_lora.ConverterMissing) as raised:
        llamacpp_lora.convert_adapter(tmp_path, tmp_path, tmp_path / "adapter.gguf")
    assert llamacpp.SETUP_COMMAND in str(raised.value)
    assert_one_sentence(str(raised.value))
    assert isinstance(raised.value, llamacpp.LlamaCppMissing)   # callers that fall back on it fall back here too


@needs_llamacpp
@needs_converter
def test_lora_gguf_on_the_base_gguf_answers_as_the_unmerged_peft_model(model_and_f16, tmp_path):
    from gguf import GGUFReader

    base_dir, f16 = model_and_f16
    adapter = make_adapter(base_dir, tmp_path / "adapter")
    out = tmp_path / "gguf" / "adapter-f16.gguf"

    facts = llamacpp_lora.convert_adapter(adapter, base_dir, out)

    assert Path(facts["path"]) == out and out.is_file() and not partial_path(out).exists()
    assert facts["tensors"] == 2 * len(TARGETS) * 2   # A and B for 7 modules in each of the 2 layers
    assert facts["alpha"] == 16 and facts["rank"] == 8
    reader = GGUFReader(out)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0

    prompt_ids, references = peft_answers(base_dir, adapter, PROMPTS)
    differs_from_base = 0
    for prompt, ids, reference in zip(PROMPTS, prompt_ids, references):
        answer = llamacpp_lora.greedy_answer_with_lora(f16, out, ids, max_new_tokens=24)
        assert answer == reference, f"{prompt!r}: llama.cpp base + LoRA {answer} != peft {reference}"
        assert len(set(answer)) > 3   # a real answer to compare, not one token repeated
        differs_from_base += llamacpp.greedy_answer(f16, ids, max_new_tokens=24) != answer
    assert differs_from_base >= 1, "the adapter changed no answer, so the comparison proves nothing"


@needs_llamacpp
@needs_converter
def test_rslora_keeps_its_scale_in_llamacpp(model_and_f16, tmp_path):
    """rsLoRA scales by alpha / sqrt(r), llama.cpp by alpha / r: the file carries alpha * sqrt(r)."""
    import numpy as np

    base_dir, f16 = model_and_f16
    adapter = make_adapter(base_dir, tmp_path / "adapter", seed=4, use_rslora=True, lora_alpha=4)
    out = tmp_path / "adapter-f16.gguf"

    facts = llamacpp_lora.convert_adapter(adapter, base_dir, out)

    assert facts["alpha"] == pytest.approx(4 * math.sqrt(8))
    assert json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"] == 4   # the adapter untouched
    prompt_ids, references = peft_answers(base_dir, adapter, PROMPTS[:1])
    answer = llamacpp_lora.greedy_answer_with_lora(f16, out, prompt_ids[0], max_new_tokens=24)
    assert answer == references[0]
    choices = llamacpp_lora.next_token_choices_with_lora(f16, out, prompt_ids[0] + answer)
    assert choices[len(prompt_ids[0]) - 1:-1] == answer   # teacher-forced, the same tokens
    assert np.isfinite(llamacpp_lora.next_token_logits_with_lora(f16, out, prompt_ids[0])).all()


@needs_converter
def test_broken_or_unsupported_adapters_fail_in_one_sentence(model_and_f16, tmp_path):
    base_dir, _ = model_and_f16
    out = tmp_path / "out" / "adapter.gguf"
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    (garbage / "adapter_model.safetensors").write_bytes(b"this is not a safetensors file")
    unmappable = tmp_path / "unmappable"   # a module llama.cpp has no name for
    make_adapter(base_dir, unmappable, target_modules=["q_proj"])
    _rename_tensors(unmappable / "adapter_model.safetensors", "self_attn.q_proj", "self_attn.frobnicate")
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                          "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes(b"")
    tied_head = tmp_path / "tied-head"   # the tiny Llama ties lm_head to the embeddings
    tied_head.mkdir()
    (tied_head / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                               "target_modules": ["q_proj", "lm_head"]}))
    (tied_head / "adapter_model.safetensors").write_bytes(b"")
    no_config = tmp_path / "empty"
    no_config.mkdir()
    cases = [(tmp_path / "missing", "no adapter folder"), (no_config, "no adapter_config.json"),
             (garbage, "converter could not convert"), (unmappable, "frobnicate"), (dora, "DoRA"),
             (tied_head, "lm_head")]

    for folder, expected in cases:
        with pytest.raises(llamacpp_lora.AdapterNotConvertible) as raised:
            llamacpp_lora.convert_adapter(folder, base_dir, out)
        message = str(raised.value)
        assert expected in message
        assert_one_sentence(message)
        assert not out.exists() and not partial_path(out).exists()


def _rename_tensors(path: Path, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({name.replace(old, new): tensor for name, tensor in tensors.items()}, path)
