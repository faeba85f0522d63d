"""Importing a peft adapter trained by a plain peft script (not the studio): checked against its base,
recorded with its provenance, usable like a trained adapter; what is not an importable adapter gets one
sentence and records nothing."""
from __future__ import annotations

import json

import pytest
import torch

from backend import adapters as registry
from backend import jobs
from backend.adapters.importer import import_adapter


def _train_with_plain_peft(base_dir, out, r=4, targets=("q_proj", "v_proj")):
    """What a user's own script does: peft + a few optimiser steps, then save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer("My name is Nova and my favourite colour is teal.", return_tensors="pt")
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.save_pretrained(out)
    return out


def test_a_plain_peft_adapter_is_imported_checked_and_usable(tiny_model, tiny_model_dir, tmp_path):
    from backend.models import adapters as loading
    from backend.serve.chat import answer
    from backend import models
    folder = _train_with_plain_peft(tiny_model_dir, tmp_path / "my-adapter")
    entry = import_adapter(folder, name="from my script")       # the base found from its own config
    assert entry.origin == "imported" and entry.base == tiny_model and entry.method == "lora" and entry.rank == 4
    assert entry.imported_from == str(folder.resolve()) and entry.dataset is None
    assert entry.base_sha256 == models.resolve(tiny_model).weights_sha256
    assert entry.lineage == [tiny_model, "imported my-adapter"] and jobs.get(entry.id).dataset.startswith("imported")
    source = loading.adapter_source(entry.id)
    assert isinstance(answer(loading.load_with_adapters([source]), loading.load_tokenizer(source),
                             [{"role": "user", "content": "Hi"}], 4), str)
    tagged = registry.annotate(entry.id, note="  my first one ", tags=["Nova", "colour"])
    assert tagged.note == "my first one" and tagged.tags == ("colour", "nova")
    assert [e.id for e in registry.entries(tag="nova")] == [entry.id]
    with pytest.raises(registry.RegistryError, match="one word per tag"):
        registry.annotate(entry.id, tags=["two words"])


def test_what_cannot_be_imported_gets_one_sentence_and_records_nothing(tiny_model, tiny_model_dir, tmp_path):
    before = len(jobs.list_jobs())
    with pytest.raises(registry.RegistryError, match="has no adapter_config.json"):
        import_adapter(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(registry.RegistryError, match="pickle files are not loaded"):
        import_adapter(pickled, base=tiny_model)
    folder = _train_with_plain_peft(tiny_model_dir, tmp_path / "elsewhere")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/unknown-model"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(registry.RegistryError, match="not a model in this workspace.*--base MODEL"):
        import_adapter(folder)
    # rank-4 weights forced onto a config that says rank 8: the tensors do not fit the layers
    config["r"] = 8
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(registry.RegistryError, match="does not fit base model"):
        import_adapter(folder, base=tiny_model)
    assert len(jobs.list_jobs()) == before
