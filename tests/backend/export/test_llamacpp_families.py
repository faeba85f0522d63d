"""The model families people fine-tune, each written by llama.cpp's own converter (convert_hf_to_gguf.py through
backend.export.llamacpp_convert) and run by llama.cpp: the teacher-forced logits of the F16 file are those of the
transformers float32 model within LOGIT_TOLERANCE, and the next token is the same wherever the float model is not
near a tie.

Each model is tiny and random, built from its transformers config class (hidden 128, 2 layers, head_dim 32,
initializer_range 0.05 so logits are not all near-ties), its weights rounded to float16 so the F16 file holds
exactly the float model; what is left is llama.cpp's F16 arithmetic. Vocabularies: the bundled SmolLM2 byte-level
BPE tokenizer (ChatML template) for the BPE families, and sentencepiece models trained here with the
`sentencepiece` package (Llama-style <unk>/<s>/</s> 0-2, Gemma-style <pad>/<eos>/<bos>/<unk> 0-3), nothing
downloaded. An architecture the converter does not know fails at once with one sentence naming it."""
from __future__ import annotations

import json
import shutil
import sysconfig
import time
from pathlib import Path

import pytest

from backend.export import llamacpp, llamacpp_convert
from backend.export.gguf import partial_path

needs_llamacpp = pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
needs_converter = pytest.mark.skipif(not llamacpp_convert.converter_available(),
                                     reason=str(llamacpp_convert.ConverterMissing()))

# Max |llama.cpp F16 logit - transformers float32 logit| allowed. Measured (llama.cpp CPU, 2 threads): llama-bpe
# 0.0023, llama3-rope-scaling 0.0027, llama-sentencepiece 0.0021, mistral 0.0021, qwen2 0.0021, qwen3 0.0032,
# gemma2 0.0024, gemma3 0.0025, phi3 0.0019; a layout fault moves logits by tenths to whole units (Gemma 3 with a
# sliding/full layer pattern llama.cpp does not follow: 0.28).
LOGIT_TOLERANCE = 0.05
TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "def square(x):\n    return x ** 2\n\nprint(square(12))",
         "Fine-tuning a small model on your own data takes minutes, not days."]
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, initializer_range=0.05, tie_word_embeddings=False)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# id: (transformers config class, model class, tokenizer, config changes)
FAMILIES = {
    "llama-bpe": ("LlamaConfig", "LlamaForCausalLM", "bpe", {}),
    "llama3-rope-scaling": ("LlamaConfig", "LlamaForCausalLM", "bpe",
                            {"rope_parameters": LLAMA3_ROPE, "max_position_embeddings": 131072}),
    "llama-sentencepiece": ("LlamaConfig", "LlamaForCausalLM", "spm-llama", {}),
    "mistral-sentencepiece": ("MistralConfig", "MistralForCausalLM", "spm-llama", {"sliding_window": None}),
    # Qwen2 with the SmolLM2 BPE vocabulary is refused (see the test below); its layout is tested with sentencepiece
    "qwen2-sentencepiece": ("Qwen2Config", "Qwen2ForCausalLM", "spm-llama", {}),
    "qwen3-bpe": ("Qwen3Config", "Qwen3ForCausalLM", "bpe", {}),
    "gemma2-sentencepiece": ("Gemma2Config", "Gemma2ForCausalLM", "spm-gemma",
                             {"query_pre_attn_scalar": 32, "sliding_window": 16, "tie_word_embeddings": True}),
    "gemma3-sentencepiece": ("Gemma3TextConfig", "Gemma3ForCausalLM", "spm-gemma",
                             {"query_pre_attn_scalar": 32, "sliding_window": 16, "tie_word_embeddings": True,
                              "layer_types": ["sliding_attention", "sliding_attention"]}),
    "phi3-sentencepiece": ("Phi3Config", "Phi3ForCausalLM", "spm-phi3", {"pad_token_id": None}),
}


# ---------------------------------------------------------------- vocabularies

def _corpus() -> list[str]:
    """Local training text for the sentencepiece models: the standard library's own source (English docstrings
    and code), so nothing is downloaded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    for name in ("json/__init__.py", "textwrap.py", "argparse.py", "pathlib/__init__.py", "pathlib.py"):
        path = root / name
        if path.is_file():
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines + TEXTS


# Phi-3's added tokens: llama.cpp does not load a phi3 GGUF whose vocabulary lacks them ("error loading model
# vocabulary: unordered_map::at")
PHI3_SPECIAL = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]


def _train_sentencepiece(folder: Path, gemma: bool, symbols: list[str] | None = None) -> Path:
    """A sentencepiece model (BPE, byte fallback, 1024 pieces) as tokenizer.model with a tokenizer_config.json
    naming its class and special tokens. No tokenizer.json: transformers 5 builds one from tokenizer.model only
    with protobuf installed, and neither llama.cpp's converter nor these tests need it (they encode with
    sentencepiece itself)."""
    import sentencepiece as spm

    folder.mkdir(parents=True)
    ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3) if gemma else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=1024, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   num_threads=1, minloglevel=2, add_dummy_prefix=not gemma,
                                   split_digits=True, allow_whitespace_only_pieces=True,
                                   remove_extra_whitespaces=False, user_defined_symbols=symbols or [], **ids)
    (folder / "tokenizer.vocab").unlink(missing_ok=True)
    special = ({"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"} if gemma
               else {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer" if gemma else "LlamaTokenizer", "add_bos_token": True,
         "add_eos_token": False, **special}), encoding="utf-8")
    return folder


def _vocabulary(folder: Path) -> dict:
    """{size, bos, eos, pad, encode}: the folder's sentencepiece model where it has one, else its tokenizer.json
    through transformers; encode(text) gives the ids with BOS where the tokenizer adds one."""
    if (folder / "tokenizer.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        return {"size": sp.get_piece_size(), "bos": sp.bos_id(), "eos": sp.eos_id(),
                "pad": sp.pad_id() if sp.pad_id() >= 0 else None,
                "encode": lambda text: [sp.bos_id()] + sp.encode(text)}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return {"size": len(tokenizer), "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
            "pad": tokenizer.pad_token_id, "encode": lambda text: tokenizer(text)["input_ids"]}


@pytest.fixture(scope="module")
def vocabularies(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Folders holding only tokenizer files: "bpe" (the bundled SmolLM2's, ChatML template), "spm-llama",
    "spm-gemma", "spm-phi3" (Llama-style with Phi-3's added tokens)."""
    root = tmp_path_factory.mktemp("vocabularies")
    bpe = root / "bpe"
    bpe.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, bpe / name)
    # the class as the hub's SmolLM2 names it: a generic fast tokenizer that loads tokenizer.json as it is (with
    # the tiny model's "TokenizersBackend", transformers 5 picks the tokenizer class from config.json's
    # model_type, and Qwen2Tokenizer swaps in Qwen's own pre-tokenizer, whose ids on this vocabulary
    # llama.cpp's converter does not recognise)
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    (bpe / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}),
                                               encoding="utf-8")
    return {"bpe": bpe, "spm-llama": _train_sentencepiece(root / "spm-llama", gemma=False),
            "spm-gemma": _train_sentencepiece(root / "spm-gemma", gemma=True),
            "spm-phi3": _train_sentencepiece(root / "spm-phi3", gemma=False, symbols=PHI3_SPECIAL)}


# ---------------------------------------------------------------- models

def build_family(family: str, vocab_dir: Path, folder: Path, seed: int = 0) -> Path:
    """The family's tiny random model (float16-exact weights) with the vocabulary in vocab_dir, saved."""
    import torch
    import transformers

    config_name, model_name, _, changes = FAMILIES[family]
    vocabulary = _vocabulary(vocab_dir)
    config = getattr(transformers, config_name)(
        **{**SHAPE, "vocab_size": vocabulary["size"], "bos_token_id": vocabulary["bos"],
           "eos_token_id": vocabulary["eos"], "pad_token_id": vocabulary["pad"], **changes})
    config.architectures = [model_name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    model.save_pretrained(folder, safe_serialization=True)
    for path in vocab_dir.iterdir():
        shutil.copy(path, folder / path.name)
    return folder


def float_logits(folder: Path, ids: list[int]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def sequences(folder: Path) -> list[list[int]]:
    """TEXTS as the folder's tokenizer encodes them, with its BOS where it adds one, and one of 40 random ids
    (longer than Gemma's sliding window of 16)."""
    import random

    vocabulary = _vocabulary(folder)
    rng = random.Random(7)
    return [vocabulary["encode"](text) for text in TEXTS] + [[rng.randrange(vocabulary["size"]) for _ in range(40)]]


# ---------------------------------------------------------------- the round trip per family

@needs_llamacpp
@needs_converter
@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_converts_and_runs_in_llamacpp_with_the_float_models_logits(family, vocabularies, tmp_path):
    import numpy as np

    started = time.monotonic()
    folder = build_family(family, vocabularies[FAMILIES[family][2]], tmp_path / family)
    assert llamacpp_convert.supported(folder) is None

    result = llamacpp_convert.convert_model(folder, tmp_path / f"{family}.gguf")

    assert Path(result["path"]).is_file() and not partial_path(tmp_path / f"{family}.gguf").exists()
    worst, compared, near_ties = 0.0, 0, 0
    for ids in sequences(folder):
        reference = float_logits(folder, ids)
        logits = llamacpp.next_token_logits(tmp_path / f"{family}.gguf", ids)
        assert logits.shape == reference.shape
        worst = max(worst, float(np.abs(logits - reference).max()))
        top2 = np.sort(reference, axis=-1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) > 2 * LOGIT_TOLERANCE
        near_ties += int((~sure).sum())
        compared += int(sure.sum())
        assert (logits.argmax(-1)[sure] == reference.argmax(-1)[sure]).all(), family
    print(f"\n{family}: {result['architecture']}, {result['tensors']} tensors, conversion {result['seconds']} s, "
          f"max |logit diff| {worst:.4f} over {compared} positions ({near_ties} near-ties), "
          f"test {time.monotonic() - started:.1f} s")
    assert worst <= LOGIT_TOLERANCE, f"{family}: llama.cpp's logits differ by up to {worst:.4f}"


@needs_llamacpp
@needs_converter
@pytest.mark.slow
def test_a_chatml_family_passes_the_exports_full_llamacpp_check(vocabularies, tmp_path):
    """Qwen3 with the ChatML BPE tokenizer: tokenizer probes, chat template and greedy answers, as an export
    checks them."""
    from backend.export import llamacpp_check

    folder = build_family("qwen3-bpe", vocabularies["bpe"], tmp_path / "qwen3")
    gguf_path = Path(llamacpp_convert.convert_model(folder, tmp_path / "qwen3.gguf")["path"])

    result = llamacpp_check.verify(gguf_path, folder, ["Who are you?", "What is 2 + 2?"], max_new_tokens=12)

    assert result["ok"], result["reason"]
    assert result["tokens_match"] and result["template_match"]


# ---------------------------------------------------------------- what the converter refuses

def test_an_unknown_architecture_fails_at_once_with_one_sentence_naming_it(tmp_path):
    folder = tmp_path / "foo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["FooForCausalLM"], "hidden_size": 64}))
    out = tmp_path / "foo.gguf"

    if llamacpp_convert.converter_available():
        reason = llamacpp_convert.supported(folder)
        assert reason and "FooForCausalLM" in reason and reason.count(". ") == 0 and "\n" not in reason
        with pytest.raises(llamacpp_convert.ModelNotConvertible, match="FooForCausalLM") as raised:
            llamacpp_convert.convert_model(folder, out)
        assert str(raised.value) == reason
    else:
        with pytest.raises(llamacpp_convert.ConverterMissing):
            llamacpp_convert.convert_model(folder, out)
    assert not out.exists() and not partial_path(out).exists()


@needs_converter
def test_a_gemma2_without_a_sentencepiece_vocabulary_fails_at_once_with_one_sentence(vocabularies, tmp_path):
    folder = tmp_path / "gemma2-bpe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Gemma2ForCausalLM"]}))
    for path in vocabularies["bpe"].iterdir():
        shutil.copy(path, folder / path.name)

    reason = llamacpp_convert.supported(folder)

    assert reason and "Gemma2ForCausalLM" in reason and "tokenizer.model" in reason
    with pytest.raises(llamacpp_convert.ModelNotConvertible, match="tokenizer.model"):
        llamacpp_convert.convert_model(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@needs_converter
def test_a_bpe_vocabulary_the_converter_does_not_recognise_fails_with_one_sentence(vocabularies, tmp_path):
    """A byte-level BPE tokenizer.json whose pre-tokenizer llama.cpp has no hash for (the SmolLM2 tokenizer with
    punctuation split one by one before its byte-level step) is named in one sentence, before the converter would stop on it."""
    folder = tmp_path / "odd-bpe"
    folder.mkdir()
    for path in vocabularies["bpe"].iterdir():
        shutil.copy(path, folder / path.name)
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": "Isolated"}, tokenizer["pre_tokenizer"]]}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152}))

    reason = llamacpp_convert.supported(folder)

    assert reason and "BPE pre-tokenizer" in reason and "chkhsh" in reason


@needs_converter
def test_qwen2_with_a_foreign_bpe_vocabulary_is_refused_in_one_sentence_naming_the_pre_tokenizer(vocabularies,
                                                                                               tmp_path):
    """transformers 5 loads a qwen2 model's tokenizer as Qwen2Tokenizer, which puts Qwen's own pre-tokenizer in
    front of whatever vocabulary the folder has: on the SmolLM2 vocabulary that gives token ids whose hash
    llama.cpp's converter does not know, and it would stop ("BPE pre-tokenizer was not recognized")."""
    folder = tmp_path / "qwen2-bpe"
    folder.mkdir()
    for path in vocabularies["bpe"].iterdir():
        shutil.copy(path, folder / path.name)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                                    "vocab_size": 49152}))

    reason = llamacpp_convert.supported(folder)

    assert reason and "BPE pre-tokenizer" in reason and "qwen2-bpe" in reason
    with pytest.raises(llamacpp_convert.ModelNotConvertible, match="BPE pre-tokenizer"):
        llamacpp_convert.convert_model(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not partial_path(tmp_path / "x.gguf").exists()
