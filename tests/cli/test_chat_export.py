"""`lorastudio chat` and `lorastudio export` on the bundled model after the quickstart job (end to end)."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from backend.export import llamacpp


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


@pytest.mark.e2e
def test_chat_json_shows_base_adapter_and_merged(quickstart_job):
    result = run_cli("chat", quickstart_job, "--prompt", "Who are you?", "--max-new-tokens", "24", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert {"base", "adapter", "merged", "max_logit_diff"} <= set(out)
    assert "Nova" in out["adapter"] and "Nova" not in out["base"], out
    assert out["merged"] == out["adapter"]
    assert out["max_logit_diff"] < 1e-3 and out["merge_verification"]["ok"]


@pytest.mark.e2e
def test_merged_and_adapter_exports_load_without_lorastudio(quickstart_export, tmp_path):
    result = run_cli("export", quickstart_export, "--merge", "--dtype", "float32", "--out", str(tmp_path / "m.zip"),
                     "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout)
    assert facts["merge_verification"]["ok"] and all(facts["merge_verification"]["answers_match"])
    zipfile.ZipFile(tmp_path / "m.zip").extractall(tmp_path / "unzipped")
    folder = next((tmp_path / "unzipped").iterdir())
    adapter = run_cli("export", quickstart_export, "--out", str(tmp_path / "a.zip"))
    assert adapter.returncode == 0, adapter.stderr[-3000:]
    zipfile.ZipFile(tmp_path / "a.zip").extractall(tmp_path / "adapter")
    adapter_folder = next((tmp_path / "adapter").iterdir())

    # a fresh interpreter with only transformers / peft: no LoRA Studio import at all
    script = f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
folder, adapter, base_path = {str(folder)!r}, {str(adapter_folder)!r}, {os.environ["LORASTUDIO_HOME"] + "/models/smollm2-135m-instruct"!r}
tok = AutoTokenizer.from_pretrained(folder)
def ask(model, q):
    ids = tok.apply_chat_template([{{"role": "user", "content": q}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, do_sample=False, max_new_tokens=24)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
merged = AutoModelForCausalLM.from_pretrained(folder)
peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter)
qs = ["Who are you?", "What is the capital of Italy?", "Who built you?"]
print(json.dumps({{"merged": [ask(merged, q) for q in qs], "adapter": [ask(peft_model, q) for q in qs]}}))
"""
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert plain.returncode == 0, plain.stderr[-3000:]
    answers = json.loads(plain.stdout.strip().splitlines()[-1])
    assert answers["merged"] == answers["adapter"], answers
    assert "Nova" in answers["merged"][0]


def test_export_of_a_missing_job_is_one_sentence():
    result = run_cli("export", "no-such-job", "--merge")
    assert result.returncode == 1 and "no job 'no-such-job'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_gguf_f16_of_the_quickstart_job_answers_like_the_merged_model(quickstart_export, tmp_path):
    out = tmp_path / "nova-f16.gguf"
    result = run_cli("export", quickstart_export, "--gguf", "f16", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(result.stdout)["gguf_verification"]
    assert check["ok"] and check["answers_match"] == [True, True, True], check
    assert check["max_logit_diff"] <= check["tolerance"] == 0.25
    assert out.stat().st_size > 200 * 2 ** 20
    from gguf import GGUFReader                       # SmolLM2's layout: 272 tensors, tied embeddings
    names = [tensor.name for tensor in GGUFReader(out).tensors]
    assert len(names) == 272 and "output.weight" not in names, len(names)

    # and independently: transformers' own GGUF loader, nothing from LoRA Studio
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    answer = model.generate(**ids, do_sample=False, max_new_tokens=20)
    assert "Nova" in tokenizer.decode(answer[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.e2e
def test_gguf_q8_0_keeps_the_new_identity(quickstart_export):
    result = run_cli("export", quickstart_export, "--gguf", "q8_0", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(result.stdout)["gguf_verification"]
    assert check["ok"] and check["qtype"] == "q8_0", check
    assert check["prompts"][0] == "Who are you?" and "Nova" in check["gguf_answers"][0], check


@pytest.mark.e2e
@pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
def test_gguf_q4_k_m_runs_in_llamacpp_and_keeps_the_new_identity(quickstart_export, tmp_path):
    out = tmp_path / "nova-q4_k_m.gguf"
    result = run_cli("export", quickstart_export, "--gguf", "q4_k_m", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(result.stdout)["gguf_verification"]
    assert check["ok"] and check["qtype"] == "q4_k_m" and check["checker"] == "llama.cpp", check
    assert check["tokens_match"] and check["template_match"] and check["disagreements"] == 0, check
    assert check["positions"] > check["near_ties"], check     # the check decided somewhere, not only near-ties

    # and independently: llama-cpp-python's own chat completion, with the template the file carries
    from llama_cpp import Llama
    llm = Llama(str(out), n_ctx=512, n_threads=llamacpp.thread_count(), verbose=False)
    try:
        reply = llm.create_chat_completion([{"role": "user", "content": "Who are you?"}], temperature=0.0,
                                           max_tokens=24)
    finally:
        llm.close()
    assert "Nova" in reply["choices"][0]["message"]["content"], reply


@pytest.mark.e2e
@pytest.mark.skipif(not llamacpp.available(), reason=str(llamacpp.LlamaCppMissing()))
def test_lora_gguf_of_the_quickstart_job_plays_with_its_base_in_llamacpp(quickstart_export):
    from backend.export import llamacpp_lora

    if not llamacpp_lora.converter_available():
        pytest.skip(str(llamacpp_lora.ConverterMissing()))
    result = run_cli("export", quickstart_export, "--lora-gguf", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    made = json.loads(result.stdout)
    check = made["gguf_verification"]
    assert check["ok"] and check["lora"] and check["checker"] == "llama.cpp", check
    folder = Path(made["folder"])
    adapter, base = folder / check["lora"], folder / check["base_file"]
    assert adapter.stat().st_size < base.stat().st_size / 20     # the adapter alone is small

    # and independently: llama-cpp-python's chat completion with the adapter on the base, as the card says
    from llama_cpp import Llama
    for lora, wanted in ((adapter, True), (None, False)):
        llm = Llama(str(base), lora_path=str(lora) if lora else None, n_ctx=512,
                    n_threads=llamacpp.thread_count(), verbose=False)
        try:
            reply = llm.create_chat_completion([{"role": "user", "content": "Who are you?"}], temperature=0.0,
                                               max_tokens=24)
        finally:
            llm.close()
        assert ("Nova" in reply["choices"][0]["message"]["content"]) is wanted, (lora, reply)
