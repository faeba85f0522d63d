"""Export on the tiny model: the merged folder needs no LoRA Studio code, the adapter-only folder loads with
plain peft, QLoRA merges onto a de-quantised base, and failures never leave a download behind."""
from __future__ import annotations

import zipfile

import pytest
import torch

from backend import export
from backend.export import llamacpp
from backend.models import adapters
from tests.backend.conftest import finished_job

PROMPTS = ("Who are you?", "Say hello.")


def greedy(model, tokenizer, prompt, tokens=12):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def adapter_model(job_id):
    """What the user tested: the base as trained (4-bit for QLoRA) with the unmerged adapter."""
    source = adapters.adapter_source(job_id)
    return adapters.load_with_adapters([source]), adapters.load_tokenizer(source)


def test_merged_export_loads_with_plain_transformers_and_answers_like_the_adapter(lora_job, workspace):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export.export_job(lora_job, "merged", "float32", prompts=PROMPTS)
    assert result.check.ok and result.check.max_logit_diff < 1e-4, result.check.summary()
    assert result.zip_path.name.endswith("-merged-float32.zip")
    names = zipfile.ZipFile(result.zip_path).namelist()
    for expected in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "README.md",
                     "Modelfile", "chat_template.jinja"):
        assert any(n.endswith("/" + expected) for n in names), (expected, names)
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)

    merged = AutoModelForCausalLM.from_pretrained(result.folder)   # plain transformers, nothing else
    tokenizer = AutoTokenizer.from_pretrained(result.folder)
    tuned, _ = adapter_model(lora_job)
    base = AutoModelForCausalLM.from_pretrained(_base_path(lora_job))
    for prompt in PROMPTS:
        assert greedy(merged, tokenizer, prompt) == greedy(tuned, tokenizer, prompt)
    # the adapter really changed the model, so the equality above means something
    assert any(greedy(base, tokenizer, p) != greedy(merged, tokenizer, p) for p in PROMPTS) or \
        _max_logit_diff(base, merged, tokenizer) > 1e-2
    card = (result.folder / "README.md").read_text()
    assert "merge_verification" in card and "lineage" in card and "sft " + lora_job in card
    assert "FROM ." in (result.folder / "Modelfile").read_text()
    assert [f.path for f in export.list_exports(lora_job)] == [result.zip_path]


def test_half_precision_export_is_half_the_size_and_verified(lora_job):
    result = export.export_job(lora_job, "merged", "bfloat16", prompts=PROMPTS)
    weights = result.folder / "model.safetensors"
    from safetensors import safe_open
    with safe_open(str(weights), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    assert result.check.dtype == "bfloat16" and result.check.tolerance == export.TOLERANCE["bfloat16"]


def test_adapter_export_loads_with_plain_peft(lora_job):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export.export_job(lora_job, "adapter")
    assert result.check is None and result.zip_path.name.endswith("-adapter.zip")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(_base_path(lora_job)), result.folder)
    tuned, tokenizer = adapter_model(lora_job)
    assert greedy(model, tokenizer, "Who are you?") == greedy(tuned, tokenizer, "Who are you?")
    assert "PeftModel.from_pretrained" in (result.folder / "README.md").read_text()


def test_qlora_merges_onto_a_dequantised_base_within_tolerance(tiny_model):
    from transformers import AutoModelForCausalLM

    job_id = finished_job(tiny_model, method="qlora")
    result = export.export_job(job_id, "merged", "float32", prompts=PROMPTS)
    assert result.check.ok, result.check.summary()
    merged = AutoModelForCausalLM.from_pretrained(result.folder)
    assert not hasattr(merged.config, "quantization_config")
    tuned, tokenizer = adapter_model(job_id)          # the 4-bit base the adapter trained on
    assert type(tuned.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    for prompt in PROMPTS:
        assert greedy(merged, tokenizer, prompt) == greedy(tuned, tokenizer, prompt)
    assert _max_logit_diff(tuned, merged, tokenizer) < export.TOLERANCE["float32"]
    assert "merge_verification" in (result.folder / "README.md").read_text()


def test_missing_job_outside_path_and_second_export_get_one_sentence(lora_job, workspace, tmp_path):
    with pytest.raises(adapters.AdapterError, match="no job 'gone-123'.*deleted"):
        export.export_job("gone-123", "adapter")
    outside = tmp_path / "secret.zip"
    outside.write_bytes(b"x")
    with pytest.raises(export.ExportError, match="outside the workspace's exports folder"):
        export.download_path(outside)
    with pytest.raises(export.ExportError, match="outside"):
        export.download_path(workspace / "exports" / ".." / "studio.db")
    with export.export_lock("someone-else"):
        with pytest.raises(export.ExportError, match="already running.*someone-else"):
            export.export_job(lora_job, "adapter")
    assert export.export_job(lora_job, "adapter").zip_path.exists()   # the lock was released


def test_a_failed_export_leaves_nothing_offered(lora_job, workspace):
    def crash(fraction, text):
        if text.startswith("zipping"):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export.export_job(lora_job, "merged", "float32", progress=crash, prompts=PROMPTS[:1])
    assert export.list_exports(lora_job) == []
    leftovers = [p.name for p in (workspace / "exports" / lora_job).iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    with pytest.raises(export.ExportError, match="not a finished export"):
        export.download_path(workspace / "exports" / lora_job / f".{lora_job}-merged-float32.zip.partial")


def test_checkpoint_of_an_unfinished_job_is_usable_and_labelled(tiny_model):
    import shutil

    from backend import jobs

    job_id = finished_job(tiny_model, steps=4)
    run_dir = jobs.get(job_id).run_dir
    shutil.rmtree(run_dir / "adapter")                # as if still training: only its checkpoints
    jobs.update(job_id, status="running")
    source = adapters.adapter_source(job_id)
    assert source.label == "checkpoint-4 (job running)" and not source.final
    result = export.export_job(job_id, "merged", "float32", prompts=PROMPTS[:1])
    assert result.check.ok and any("had not finished" in note for note in result.notes)
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(adapters.AdapterError, match="has no adapter yet"):
        adapters.adapter_source(job_id)


def _base_path(job_id):
    from backend import models
    return models.resolve(adapters.adapter_source(job_id).config.model).path


def _max_logit_diff(a, b, tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return float((a(**ids).logits.float() - b(**ids).logits.float()).abs().max())


@pytest.mark.slow
def test_gguf_export_is_verified_zipped_with_a_modelfile(lora_job):
    result = export.export_job(lora_job, "gguf", qtype="f16", prompts=PROMPTS)
    assert result.gguf["ok"] and result.gguf["qtype"] == "f16", result.gguf
    names = [n.split("/", 1)[1] for n in zipfile.ZipFile(result.zip_path).namelist()]
    assert sorted(names) == sorted([f"{lora_job}-f16.gguf", "Modelfile", "README.md", "training-card.md"])
    assert f"FROM ./{lora_job}-f16.gguf" in (result.folder / "Modelfile").read_text()
    assert "gguf_verification" in (result.folder / "README.md").read_text()
    assert not any(p.name.endswith(".merged") for p in result.folder.parent.iterdir())   # temp merge removed
    if llamacpp.available():
        assert result.gguf["checker"] == "llama.cpp" and result.gguf["template_match"], result.gguf
        card = (result.folder / "README.md").read_text()
        assert ("GGUF verification (loaded by llama.cpp itself; written by llama.cpp's convert_hf_to_gguf.py): "
                "passed") in card


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
def test_q4_k_m_export_is_quantised_and_checked_by_llamacpp(lora_job):
    from gguf import GGUFReader

    result = export.export_job(lora_job, "gguf", qtype="q4_k_m", prompts=PROMPTS)

    assert result.gguf["ok"] and result.gguf["qtype"] == "q4_k_m" and result.gguf["checker"] == "llama.cpp"
    names = sorted(p.name for p in result.folder.iterdir())
    assert names == sorted([f"{lora_job}-q4_k_m.gguf", "Modelfile", "README.md", "training-card.md"])  # no F16
    reader = GGUFReader(result.folder / f"{lora_job}-q4_k_m.gguf")
    assert int(reader.fields["general.file_type"].contents()) == 15   # LLAMA_FTYPE_MOSTLY_Q4_K_M
    card = (result.folder / "README.md").read_text()
    assert "teacher-forced next-token check" in card and "tie_margin: 3.0" in card


def test_k_quants_without_llamacpp_fail_at_once_with_the_setup_command(lora_job, monkeypatch):
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    assert "q4_k_m" not in export.gguf_qtypes_here() and "f16" in export.gguf_qtypes_here()
    with pytest.raises(export.ExportError, match=r"Q4_K_M needs llama.cpp's quantiser: .*\./studio\.sh start"):
        export.export_job(lora_job, "gguf", qtype="q4_k_m", prompts=PROMPTS)
    assert export.list_exports(lora_job) == []


def test_a_gguf_that_fails_verification_is_not_offered(lora_job, monkeypatch):
    from backend.export import gguf as gguf_export
    from backend.export import llamacpp_check

    failed = {"ok": False, "reason": "greedy answers differ on 1 of 2 prompts"}
    monkeypatch.setattr(gguf_export, "verify_gguf", lambda *a, **k: failed)
    monkeypatch.setattr(llamacpp_check, "verify", lambda *a, **k: failed)
    with pytest.raises(export.ExportError, match="failed verification: greedy answers differ.*nothing is offered"):
        export.export_job(lora_job, "gguf", qtype="q8_0", prompts=PROMPTS)
    assert export.list_exports(lora_job) == []
    assert [p.name for p in (export.workspace.exports_dir() / lora_job).iterdir()] == []


def test_gguf_of_an_unsupported_architecture_fails_at_once(tiny_model_dir, workspace, tmp_path):
    import json
    import shutil

    from backend import models

    folder = tmp_path / "foo-model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    models.import_model(folder, name="tiny-llama")   # the job's base now claims another architecture
    job_id = finished_job("tiny-llama", steps=1)
    with pytest.raises(Exception, match="does not support (the architecture )?FooForCausalLM"):
        export.export_job(job_id, "gguf", qtype="f16")
    assert export.list_exports(job_id) == []


def test_merge_check_catches_a_merge_that_lost_the_adapter(lora_job):
    source = adapters.adapter_source(lora_job)
    model, _ = adapters.load_merged(source)
    tokenizer = adapters.load_tokenizer(source)
    reference = export.probe(model, tokenizer, PROMPTS)
    with model.disable_adapter():     # what a broken merge would give: the base alone
        wrong = export.follow(model, tokenizer, reference.prompt_lengths, reference.sequences)
    check = export.merge_check("float32", PROMPTS, reference, wrong)
    assert not check.ok and check.max_logit_diff > 1e-2 and "WARNING" in check.summary()
    right = export.follow(model, tokenizer, reference.prompt_lengths, reference.sequences)
    assert export.merge_check("float32", PROMPTS, reference, right).max_logit_diff == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
def test_lora_gguf_export_plays_with_its_base_in_llamacpp_and_its_card_snippet_runs(lora_job, tmp_path):
    import subprocess
    import sys

    from backend.export import llamacpp_lora

    if not llamacpp_lora.converter_available():
        pytest.skip(str(llamacpp_lora.ConverterMissing()))

    result = export.export_job(lora_job, "lora-gguf", prompts=PROMPTS)

    check = result.gguf
    assert check["ok"] and check["lora"] == f"{lora_job}-lora-f16.gguf" and check["checker"] == "llama.cpp", check
    assert check["answers_match"] == [True, True] and check["tokens_match"] and check["template_match"]
    names = sorted(p.name for p in result.folder.iterdir())
    assert names == sorted([f"{lora_job}-lora-f16.gguf", "tiny-llama-f16.gguf", "Modelfile", "README.md",
                            "training-card.md"]), names
    modelfile = (result.folder / "Modelfile").read_text()
    assert "FROM ./tiny-llama-f16.gguf\nADAPTER ./" + f"{lora_job}-lora-f16.gguf" in modelfile
    card = (result.folder / "README.md").read_text()
    assert "LoRA GGUF verification (base + adapter loaded by llama.cpp itself" in card
    assert "identical to the unmerged adapter's" in card
    assert not any(p.name.endswith((".base", ".partial")) for p in result.folder.parent.iterdir())
    # the card's Python snippet, run as a user would in that folder (llama-cpp-python only)
    snippet = card.split("```python\n")[1].split("```")[0]
    ran = subprocess.run([sys.executable, "-I", "-c", snippet], cwd=result.folder, capture_output=True, text=True,
                         timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr[-2000:]


def test_lora_gguf_of_a_dora_job_is_refused_in_one_sentence(tiny_model):
    from backend.export import llamacpp_lora

    if not (llamacpp.available() and llamacpp_lora.converter_available()):
        pytest.skip("llama.cpp or its converter is not set up here")
    dora_job = finished_job(tiny_model, method="dora", steps=1)
    with pytest.raises(export.ExportError, match="DoRA adapter") as caught:
        export.export_job(dora_job, "lora-gguf", prompts=PROMPTS)
    assert "\n" not in str(caught.value) and export.list_exports(dora_job) == []


def test_the_lora_gguf_base_folder_links_the_weights_and_carries_the_jobs_tokenizer(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from backend.export import lora_gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{{ messages[0]['content'] }}"   # the job trained with another template

    lora_gguf._base_with_tokenizer(tiny_model_dir, tokenizer, tmp_path / "view")

    weights = next((tmp_path / "view").glob("*.safetensors"))
    assert weights.is_symlink() and weights.resolve().parent == tiny_model_dir.resolve()
    assert AutoTokenizer.from_pretrained(tmp_path / "view").chat_template == "{{ messages[0]['content'] }}"
