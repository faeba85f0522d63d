"""GGUF export of a merged model (llama.cpp / Ollama / LM Studio format), written and verified in Python.

What: `write_gguf` turns a plain HF folder (safetensors + tokenizer + config.json, as `save_pretrained` writes
a merged model) into one .gguf file in F16 or Q8_0 with the `gguf` package; `verify_gguf` loads that file back
through transformers' own GGUF loader and compares it with the folder it came from. llama.cpp is not used.

Why this shape:
- Memory stays near one copy of the weights: the tensor table is planned from the safetensors headers, then
  every tensor is read, converted and written on its own (GGUFWriter's add_tensor_info, then
  write_tensor_data one by one) instead of collecting the whole model before writing.
- The layout is llama.cpp's (convert_hf_to_gguf.py): gguf's tensor-name map, q/k rows permuted for the llama
  architecture (transformers' GGUF loader applies the inverse, so the round trip is exact), 1-D tensors
  (norms, biases) kept in F32, no output.weight when the embeddings are tied, the tokenizer as byte-level BPE
  (`gpt2`: tokens, token types, merges, special ids, add_bos/eos, `pre`) and the chat template.
- The file appears at `out_path` only when complete: it is written to `<out>.gguf.partial` and renamed, and
  the partial file is removed when the export fails or is interrupted (a SIGKILL can leave the partial
  file, which is never offered).
- Unsupported models fail in `check_supported` before anything is written: other architectures, rope
  scaling (llama3 / yarn / linear: transformers' GGUF loader would ignore it, so it could not be verified),
  and tokenizers that are not byte-level BPE with a known pre-tokenizer (sentencepiece vocabularies of
  Llama 2 / Mistral v0.1 are not written yet).

This writer is the fallback where llama.cpp's own converter is not set up (backend/export/llamacpp_convert.py
is preferred). It writes no k-quants: gguf 0.19's `gguf.quants` can only de-quantise them (Q4_K and Q6_K, which
Q4_K_M mixes, raise NotImplementedError in `quantize`); Q4_K_M / Q5_K_M / Q6_K come from llama.cpp's quantiser
on the F16 file (backend/export/llamacpp.quantize).

Verification (the figures go to the export card and the UI):
- Tokenizer: the GGUF's own tokenizer (rebuilt by transformers from the file's vocab, merges and template)
  must turn every chat-templated prompt into exactly the token ids of the folder's tokenizer.
- Greedy answers: the folder's model (float32) and the GGUF model (de-quantised to float32) answer each
  prompt with the same decoding settings; `answers_match` says whether the token ids are equal.
- Logits: both models score the same sequences (prompt + reference answer); `max_logit_diff` is the largest
  |difference| over the positions that choose the answer tokens.
- F16 passes when the tokens match, every greedy answer is equal and the logits stay within F16_TOLERANCE.
- Q8_0 rounds every weight to 8 bits, so a free-running answer can legitimately take another path where the
  reference itself hesitates between two tokens, and then everything after differs. The fair check is
  teacher-forced: at every position of the reference answer the Q8_0 model must pick the same next token,
  except where the reference's own top-2 logits are closer than Q8_0_TIE_MARGIN (a near-tie, where any
  rounding may flip the choice). Free-running equality is still reported in `answers_match`.
"""
from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Hugging Face `architectures[0]` -> gguf `general.architecture` (Mistral is a llama in llama.cpp).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
QTYPES = ("f16", "q8_0")

# Largest |logit(GGUF F16) - logit(folder, float32)| accepted. F16 rounds each weight to 11 significant bits:
# measured 0.039 on the bundled SmolLM2 and 0.033 on its quickstart merge (logits span about -35..+35), 0 on
# a model whose weights are already float16. A layout fault moves logits by whole units (a missing q/k
# permutation: 11.8 on the tiny test llama). Same figure as backend.export's float16 merge tolerance.
F16_TOLERANCE = 0.25
# Q8_0 teacher-forced check: where the reference's top-1 / top-2 logit gap is below this, the position is a
# near-tie and the 8-bit rounding may pick the other token. Measured on the bundled model and its quickstart
# merge (12 prompts, 48 tokens): Q8_0 changes that gap by at most 0.36 (median 0.07) and the greedy choice
# flipped only where the gap was under 0.07. The whole-vocabulary |logit diff| reaches 1.3 but is not gated:
# it sits in tokens far from the top.
Q8_0_TIE_MARGIN = 1.0

_FILE_TYPES = {"f16": 1, "q8_0": 7}           # gguf.LlamaFileType MOSTLY_F16 / MOSTLY_Q8_0
_K_QUANT_FILE_TYPES = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}   # written by llama.cpp's quantiser (llamacpp.py)
_SKIPPED_TENSORS = ("rotary_emb.inv_freq",)    # buffers some old checkpoints carry; llama.cpp drops them too
_CHUNK_ELEMENTS = 4 * 1024 * 1024              # rows converted at a time: a float32 working copy of <= 16 MB

# tokenizer.json pre-tokenizer -> llama.cpp `tokenizer.ggml.pre`. llama.cpp picks the name by hashing the
# tokens of a test text; matching the pre-tokenizer's structure gives the same answer for these families.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


class GgufError(ValueError):
    """A model or request the GGUF export cannot handle; the message is one sentence for the user."""


@dataclass
class _Tensor:
    hf_name: str
    gguf_name: str
    file: Path
    shape: tuple[int, ...]
    ggml_type: object          # gguf.GGMLQuantizationType
    nbytes: int


# ---------------------------------------------------------------- checks

def check_supported(model_dir: Path) -> str:
    """The gguf architecture name for this folder, or GgufError saying what is not supported (nothing written)."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    arch = (config.get("architectures") or [config.get("model_type") or "an unknown architecture"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GgufError(f"GGUF export does not support {arch} yet; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise GgufError(f"GGUF export does not support {arch} with '{rope_type}' rope scaling yet")
    _tokenizer_pre(model_dir)   # raises for tokenizers that are not byte-level BPE
    return SUPPORTED_ARCHITECTURES[arch]


def _tokenizer_pre(model_dir: Path) -> str:
    """llama.cpp's pre-tokenizer name for the folder's byte-level BPE tokenizer.json."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GgufError(f"GGUF export needs tokenizer.json in '{model_dir}' (a fast tokenizer); none was found")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model, decoder = tokenizer.get("model") or {}, tokenizer.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise GgufError("GGUF export does not support this tokenizer yet (only byte-level BPE, as in Llama 3, "
                        "Qwen2 and SmolLM2; sentencepiece vocabularies are not written)")
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = _SPLIT_PRE.get((steps[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise GgufError(f"GGUF export does not support this tokenizer's pre-tokenizer yet ({' + '.join(map(str, kinds))})")


# ---------------------------------------------------------------- writing

def partial_path(out_path: Path) -> Path:
    """Where the file is written until it is complete (never offered for download)."""
    return Path(out_path).with_suffix(".gguf.partial")


def write_gguf(model_dir: Path, out_path: Path, qtype: str = "f16", progress=None) -> dict:
    """Write the folder's model as one GGUF file; returns {qtype, tensors, bytes, seconds, path, ...}.

    progress(fraction, text) is called after each tensor. An exception (a failing tensor, a progress callback
    that raises to cancel) removes the partial file and leaves nothing at out_path.
    """
    import gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    if qtype not in QTYPES:
        raise GgufError(f"unknown GGUF type '{qtype}'; choose one of {', '.join(QTYPES)}")
    arch = check_supported(model_dir)
    config = _read_config(model_dir)
    tensors = _plan_tensors(model_dir, config, arch, qtype)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_path)
    partial.unlink(missing_ok=True)   # a torn file from an export that was killed
    started = time.perf_counter()
    writer = gguf.GGUFWriter(partial, arch)
    try:
        _add_model_metadata(writer, model_dir, config, arch, qtype)
        _add_tokenizer_metadata(writer, model_dir, config.vocab_size)
        for tensor in tensors:
            writer.add_tensor_info(tensor.gguf_name, tensor.shape, np.float32, tensor.nbytes,
                                   raw_dtype=tensor.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.kv_data = [{}]   # the vocab and merges are on disk now; free them before the weights
        gc.collect()
        for index, tensor in enumerate(tensors, start=1):
            writer.write_tensor_data(_converted(tensor, config, arch))
            if progress:
                progress(index / len(tensors), f"{tensor.gguf_name} ({index}/{len(tensors)})")
        writer.close()
        partial.replace(out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return {"qtype": qtype, "architecture": arch, "path": str(out_path), "tensors": len(tensors),
            "bytes": out_path.stat().st_size, "seconds": round(time.perf_counter() - started, 2),
            "tied_embeddings": bool(config.tie_word_embeddings)}


def _plan_tensors(model_dir: Path, config, arch: str, qtype: str) -> list[_Tensor]:
    """Every tensor's gguf name, shape, type and size, from the safetensors headers only (no weights read)."""
    import gguf
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GgufError(f"no .safetensors weights in '{model_dir}'; GGUF export needs a merged model folder")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    plan, seen = [], set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith(_SKIPPED_TENSORS):
                    continue
                if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                    continue   # tied: llama.cpp reuses token_embd, and so does transformers' loader
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise GgufError(f"GGUF export does not know where tensor '{hf_name}' goes in a {arch} "
                                    "GGUF file; this model has parts the export does not support yet")
                shape = tuple(handle.get_slice(hf_name).get_shape())
                ggml_type = _ggml_type(shape, qtype)
                plan.append(_Tensor(hf_name, gguf_name, file, shape, ggml_type, _nbytes(shape, ggml_type)))
                seen.add(gguf_name)
    if "output.weight" not in seen and not config.tie_word_embeddings:
        raise GgufError(f"'{model_dir}' has untied embeddings but no lm_head.weight; the weights are incomplete")
    return plan


def _ggml_type(shape: tuple[int, ...], qtype: str):
    """llama.cpp's choice: 1-D tensors (norms, biases) stay F32; rows that Q8_0 blocks cannot tile go F16."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return Q.F32
    if qtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return Q.Q8_0
    return Q.F16


def _nbytes(shape: tuple[int, ...], ggml_type) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(shape)) // block * size


def _converted(tensor: _Tensor, config, arch: str) -> np.ndarray:
    """One tensor read from disk, in llama.cpp's layout and type. Large tensors are converted a slice of rows
    at a time into the output array, so the float32 working copy stays small."""
    import gguf
    from safetensors import safe_open

    part = tensor.gguf_name.split(".")[-2]
    permute = arch == "llama" and part in ("attn_q", "attn_k")
    if len(tensor.shape) == 1 or permute:   # taken whole: small, and the permutation mixes rows
        with safe_open(tensor.file, framework="pt") as handle:
            data = handle.get_tensor(tensor.hf_name).float().numpy()
        if permute:
            data = _permute_rope(data, config.num_key_value_heads if part == "attn_k"
                                 else config.num_attention_heads)
        return gguf.quants.quantize(np.ascontiguousarray(data), tensor.ggml_type)
    out = np.empty(gguf.quants.quant_shape_to_byte_shape(tensor.shape, tensor.ggml_type), dtype=np.uint8)
    out = out.view(np.float16) if tensor.ggml_type == gguf.GGMLQuantizationType.F16 else out
    step = max(1, _CHUNK_ELEMENTS // int(np.prod(tensor.shape[1:])))
    for start in range(0, tensor.shape[0], step):
        # reopened per slice: pages of a memory-mapped file count as resident until it is closed
        with safe_open(tensor.file, framework="pt") as handle:
            rows = handle.get_slice(tensor.hf_name)[start:start + step].float().numpy()
        out[start:start + step] = gguf.quants.quantize(rows, tensor.ggml_type)
    return out


def _permute_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half rope layout -> llama.cpp's interleaved pairs (convert_hf_to_gguf LlamaModel.permute);
    transformers' GGUF loader (LlamaTensorProcessor) applies the inverse when reading the file back."""
    half = weights.shape[0] // heads // 2
    return np.ascontiguousarray(
        weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape))


def _add_model_metadata(writer, model_dir: Path, config, arch: str, qtype: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(model_dir.name)
    writer.add_file_type(_FILE_TYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim * config.num_attention_heads != config.hidden_size:   # e.g. Mistral Nemo
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_tokenizer_metadata(writer, model_dir: Path, vocab_size: int) -> None:
    """Byte-level BPE as llama.cpp's `_set_vocab_gpt2` writes it, plus the chat template. Read with the
    `tokenizers` library from tokenizer.json (~30 MB) rather than AutoTokenizer (~120 MB resident)."""
    import gguf
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokens, types = _token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_tokenizer_pre(model_dir))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # merges, bos/eos/unk/pad ids and the chat template, found the way llama.cpp's converter finds them
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise GgufError(f"the tokenizer in '{model_dir}' has no BPE merges; cannot write a usable GGUF vocab")
    # what the tokenizer really does with a plain text, rather than SpecialVocab's guess
    probe = tokenizer.encode("a", add_special_tokens=True).ids
    for kind, where in (("bos", probe[:1]), ("eos", probe[-1:])):
        token_id = special.special_token_ids.get(kind)
        special.add_special_token[kind] = token_id is not None and where == [token_id]
    special.add_to_gguf(writer, quiet=True)


def _token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """One entry per embedding row: NORMAL tokens, CONTROL / USER_DEFINED added tokens, UNUSED padding rows."""
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab(with_added_tokens=True).items()}
    if by_id and max(by_id) >= vocab_size:
        raise GgufError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings")
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


# ---------------------------------------------------------------- verification

def verify_gguf(gguf_path: Path, model_dir: Path, prompts: list[str], max_new_tokens: int = 24,
                compare_logits: bool = True) -> dict:
    """Load the GGUF back through transformers and compare it with the folder's model (see the docstring).

    compare_logits=False drops the F16 logit gate (the Q8_0 check always uses the logits)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, model_dir = Path(gguf_path), Path(model_dir)
    qtype = _qtype_of(gguf_path)
    result = {"qtype": qtype, "prompts": list(prompts), "answers_match": [], "gguf_answers": [],
              "reference_answers": [], "max_logit_diff": None, "tolerance": None, "ok": False, "reason": ""}
    reference_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference_inputs = [_chat_ids(reference_tokenizer, prompt) for prompt in prompts]
    # the reference first, then freed: the two models are never in memory together
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generation = _greedy_config(model, reference_tokenizer, max_new_tokens)
    reference = [_answer_and_logits(model, ids, generation) for ids in reference_inputs]
    del model
    gc.collect()

    try:
        gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        gguf_inputs = [_chat_ids(gguf_tokenizer, prompt) for prompt in prompts]
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    except Exception as error:  # the loader raises many kinds on a file it cannot read
        result["reason"] = f"transformers cannot load the GGUF file back ({_first_line(error)})"
        return result
    tokens_match = all(a.tolist() == b.tolist() for a, b in zip(reference_inputs, gguf_inputs))
    diffs, disagreements = [], 0
    for (ref_answer, ref_logits), ids in zip(reference, gguf_inputs):
        answer = _greedy(model, ids, generation)
        result["gguf_answers"].append(gguf_tokenizer.decode(answer, skip_special_tokens=True))
        result["reference_answers"].append(reference_tokenizer.decode(ref_answer, skip_special_tokens=True))
        result["answers_match"].append(answer.tolist() == ref_answer.tolist())
        logits = _answer_logits(model, ids, ref_answer)
        diffs.append(float((logits - ref_logits).abs().max()))
        disagreements += _real_disagreements(ref_logits, logits, ref_answer)
    del model
    gc.collect()

    result["max_logit_diff"] = max(diffs) if compare_logits and diffs else None
    result["tolerance"] = F16_TOLERANCE if qtype == "f16" and compare_logits else None
    result.update(tokens_match=tokens_match, disagreements=disagreements, tie_margin=Q8_0_TIE_MARGIN)
    result["ok"], result["reason"] = _verdict(qtype, tokens_match, result, disagreements, compare_logits)
    return result


def _verdict(qtype, tokens_match, result, disagreements, compare_logits) -> tuple[bool, str]:
    if not tokens_match:
        return False, ("the GGUF tokenizer turns the prompts into other tokens than the model's own tokenizer "
                       "(vocab, merges or chat template written wrong)")
    if qtype == "q8_0":
        if disagreements:
            return False, (f"the Q8_0 model picks another next token than the merged model at {disagreements} "
                           f"answer position(s) where the merged model is not near a tie (margin "
                           f"{Q8_0_TIE_MARGIN})")
        return True, "Q8_0 picks the merged model's next token at every answer position outside near-ties"
    if not all(result["answers_match"]):
        return False, (f"greedy answers differ from the merged model's on "
                       f"{result['answers_match'].count(False)} of {len(result['answers_match'])} prompts")
    if compare_logits and result["max_logit_diff"] > F16_TOLERANCE:
        return False, f"max |logit diff| {result['max_logit_diff']:.3g} is above the tolerance {F16_TOLERANCE}"
    return True, "greedy answers equal" + (f"; max |logit diff| {result['max_logit_diff']:.3g} <= "
                                           f"{F16_TOLERANCE}" if compare_logits else "")


def describe(verification: dict) -> str:
    """The verification in words for the card: "passed — ..." / "failed — ..." (see check_detail)."""
    return ("passed — " if verification.get("ok") else "failed — ") + check_detail(verification)


def check_detail(verification: dict) -> str:
    """Which check decided, what it measured, and why free-running greedy answers that differ are within a
    passed check of a quantised type rather than a contradiction (the Export tab shows this next to the verdict)."""
    qtype = str(verification.get("qtype") or "").upper()
    matched = verification.get("answers_match") or []
    equal = f"{sum(matched)}/{len(matched)}"
    if not verification.get("ok"):
        return (verification.get("reason") or "no reason recorded") + "."
    by_llamacpp = verification.get("checker") == "llama.cpp"
    model = "llama.cpp" if by_llamacpp else f"the {qtype} model"
    text = ("llama.cpp's tokenizer gives the training tokenizer's ids and the chat template in the file renders "
            "the training template's prompt; " if by_llamacpp else "")
    if qtype != "F16":
        margin = verification.get("tie_margin") or Q8_0_TIE_MARGIN
        positions = verification.get("positions")
        text += (f"teacher-forced next-token check: at every answer position where the merged model's top two "
                 f"logits are at least {margin:g} apart, {model} picks the merged model's token "
                 f"({verification.get('disagreements') or 0} disagreements"
                 + (f" in {positions} positions, {verification.get('near_ties') or 0} near-ties" if positions
                    else "") + ").")
        if verification.get("top1_agreement") is not None:
            text += (f" Top-1 agreement where the top two are at least {verification.get('soft_margin', 0.5):g} "
                     f"apart: {100 * verification['top1_agreement']:.0f} % (at least "
                     f"{100 * (verification.get('min_top1') or 0):.0f} %).")
        if matched and not all(matched):
            text += (f" Free-running greedy answers: {equal} identical, which the check allows: {qtype} rounding "
                     "may flip a near-tie, and a freely generated answer then takes another path.")
        elif matched:
            text += f" Free-running greedy answers: {equal} identical as well."
        return text
    diff, tolerance = verification.get("max_logit_diff"), verification.get("tolerance")
    reference = "the unmerged adapter's" if verification.get("lora") else "the merged model's"
    text += f"greedy answers identical to {reference} on {equal} prompts"
    if diff is not None:
        text += f", largest |logit difference| {diff:.2e}" + (f" <= tolerance {tolerance:g}" if tolerance else "")
    return text + "."


def _chat_ids(tokenizer, prompt: str):
    """The prompt as the chat template renders it for generation, as a 1-D tensor of ids."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    return ids[0]


def _greedy_config(model, tokenizer, max_new_tokens: int):
    """One decoding setup for both models: greedy, the reference's stop tokens, no penalties from either
    model's generation_config.json (the GGUF model has none)."""
    from transformers import GenerationConfig

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad)


def _greedy(model, ids, generation):
    import torch

    model.generation_config = generation
    with torch.no_grad():
        out = model.generate(ids[None], attention_mask=torch.ones_like(ids)[None], generation_config=generation)
    return out[0, ids.shape[0]:]


def _answer_logits(model, ids, answer):
    """Logits at the positions that choose each answer token (prompt + answer, teacher-forced)."""
    import torch

    sequence = torch.cat([ids, answer])[None]
    with torch.no_grad():
        logits = model(sequence).logits[0]
    return logits[ids.shape[0] - 1: sequence.shape[1] - 1].float()


def _answer_and_logits(model, ids, generation):
    answer = _greedy(model, ids, generation)
    return answer, _answer_logits(model, ids, answer)


def _real_disagreements(ref_logits, logits, ref_answer) -> int:
    """Answer positions where the GGUF model's top token is not the reference's and the reference was sure."""
    top2 = ref_logits.topk(2, dim=-1).values
    sure = (top2[:, 0] - top2[:, 1]) >= Q8_0_TIE_MARGIN
    return int(((logits.argmax(-1) != ref_answer) & sure).sum())


def _qtype_of(gguf_path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("general.file_type")
    file_type = int(field.contents()) if field is not None else None
    names = {value: name for name, value in {**_FILE_TYPES, **_K_QUANT_FILE_TYPES}.items()}
    return names.get(file_type, f"file_type {file_type}")


# ---------------------------------------------------------------- small helpers

def _read_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise GgufError(f"'{path.parent}' has no config.json; GGUF export needs a model folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GgufError(f"cannot read '{path}' ({error})") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
