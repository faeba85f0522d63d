"""GGUF export: files written with the `gguf` package load back through transformers' GGUF loader and answer
like the folder they came from; unsupported models and interrupted exports never leave a file to offer.

The bundled SmolLM2's own round trip (F16 and Q8_0, greedy answers and logits) runs in `python -m bench gguf`
(verified there); in the suite the CLI's F16 export of the quickstart job checks the same architecture end to end
(tests/cli/test_chat_export.py), and the tiny Llama's exact round trips below check the layout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backend.export.gguf import F16_TOLERANCE, QTYPES, GgufError, check_supported, partial_path, verify_gguf, \
    write_gguf

PROMPTS = ["Who are you?", "What is the capital of Italy?", "Write one sentence about the sea."]


def round_trip(model_dir: Path, out_dir: Path, qtype: str, prompts=PROMPTS) -> tuple[dict, dict]:
    """Write model_dir as GGUF and verify it against model_dir; (write facts, verification). The export tests
    can call this on a finished job's merged folder."""
    facts = write_gguf(model_dir, out_dir / f"model-{qtype}.gguf", qtype)
    return facts, verify_gguf(Path(facts["path"]), model_dir, prompts)


def f16_exact_variant(tiny_model_dir: Path, folder: Path, tied: bool | None = None, seed: int = 1,
                     **config_changes) -> Path:
    """The tiny llama with weights rounded to float16 (so an F16 export is lossless and any layout fault shows
    as a logit difference), tied or untied (None: as the tiny model is), with larger random weights
    (initializer_range 0.2) so greedy answers are not all one token; `config_changes` override the config; `seed`
    draws other weights of the same shape."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    if tied is not None:
        config.tie_word_embeddings = tied
    for name, value in {"initializer_range": 0.2, **config_changes}.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def tensor_names(path: Path) -> set[str]:
    from gguf import GGUFReader
    return {tensor.name for tensor in GGUFReader(path).tensors}


def test_the_writer_leaves_k_quants_to_llamacpp_because_gguf_cannot_quantize_them():
    import gguf
    import numpy as np

    assert QTYPES == ("f16", "q8_0")
    with pytest.raises(NotImplementedError):
        gguf.quants.quantize(np.zeros((1, 256), dtype=np.float32), gguf.GGMLQuantizationType.Q4_K)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.slow
def test_f16_round_trip_is_exact_on_a_tiny_llama(tiny_model_dir, tmp_path, tied):
    model_dir = f16_exact_variant(tiny_model_dir, tmp_path / "model", tied)
    facts, check = round_trip(model_dir, tmp_path, "f16")

    assert facts["qtype"] == "f16" and facts["tied_embeddings"] is tied and facts["bytes"] > 0
    assert ("output.weight" in tensor_names(Path(facts["path"]))) is not tied   # llama.cpp's tied layout
    assert check["ok"], check["reason"]
    assert check["tokens_match"] and check["answers_match"] == [True, True, True]
    assert check["gguf_answers"] == check["reference_answers"]
    assert len(set(check["reference_answers"])) > 1   # the answers say something, not one repeated token
    # weights already float16: only summation order differs (a wrong q/k permutation moves logits by > 0.1)
    assert check["max_logit_diff"] < 1e-3 and check["tolerance"] == F16_TOLERANCE


@pytest.mark.slow
def test_q8_0_loads_back_and_stays_close(tiny_model_dir, tmp_path):
    facts, check = round_trip(tiny_model_dir, tmp_path, "q8_0")

    assert facts["qtype"] == "q8_0" and check["qtype"] == "q8_0"
    assert check["tokens_match"] and len(check["gguf_answers"]) == len(PROMPTS)
    # a random model is a near-tie everywhere, so free-running answers may part; the teacher-forced check holds
    assert check["ok"], check["reason"]
    assert check["max_logit_diff"] < 0.05 and check["tolerance"] is None
    f16 = write_gguf(tiny_model_dir, tmp_path / "f16.gguf", "f16")
    assert facts["bytes"] < 0.7 * f16["bytes"]   # Q8_0 weights are 34/64 of F16; the vocab is the same size


def test_metadata_carries_the_tokenizer_template_and_hparams(tiny_model_dir, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = Path(write_gguf(tiny_model_dir, tmp_path / "m.gguf", "f16")["path"])
    fields = GGUFReader(path).fields
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def value(key):
        return fields[key].contents()

    assert value("general.architecture") == "llama" and value("general.file_type") == 1
    assert value("llama.block_count") == 2 and value("llama.embedding_length") == 64
    assert value("llama.attention.head_count") == 4 and value("llama.attention.head_count_kv") == 2
    assert value("tokenizer.ggml.model") == "gpt2" and len(fields["tokenizer.ggml.tokens"].data) == len(tokenizer)
    assert value("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert value("tokenizer.chat_template") == tokenizer.chat_template
    assert len(fields["tokenizer.ggml.merges"].data) > 1000


def test_unsupported_architecture_fails_at_once_and_writes_nothing(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "foo"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    out = tmp_path / "out" / "foo.gguf"

    with pytest.raises(GgufError, match="GGUF export does not support FooForCausalLM yet; supported: "
                                        "LlamaForCausalLM"):
        write_gguf(model_dir, out, "f16")
    assert not out.exists() and not partial_path(out).exists()


def test_rope_scaling_and_unknown_types_are_refused(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "scaled"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0}
    (model_dir / "config.json").write_text(json.dumps(config))

    with pytest.raises(GgufError, match="does not support LlamaForCausalLM with 'llama3' rope scaling"):
        check_supported(model_dir)
    with pytest.raises(GgufError, match="unknown GGUF type 'q4_k_m'"):
        write_gguf(tiny_model_dir, tmp_path / "x.gguf", "q4_k_m")
    assert not (tmp_path / "x.gguf").exists()


def test_interrupted_export_leaves_no_file(tiny_model_dir, tmp_path):
    out = tmp_path / "exports" / "model-f16.gguf"
    calls = []

    def progress(fraction, text):
        calls.append((fraction, text))
        if len(calls) == 5:
            raise KeyboardInterrupt("cancelled")   # what a cancel / kill looks like from inside the loop

    with pytest.raises(KeyboardInterrupt):
        write_gguf(tiny_model_dir, out, "f16", progress=progress)
    assert not out.exists() and not partial_path(out).exists()
    assert [round(f, 2) for f, _ in calls][:2] == [0.05, 0.1] and "blk." in calls[1][1]

    # a SIGKILL can leave the partial file behind: it is never the offered name, and the next export replaces it
    partial_path(out).write_bytes(b"torn")
    facts = write_gguf(tiny_model_dir, out, "f16")
    assert out.exists() and not partial_path(out).exists() and facts["tensors"] == 20
