from pathlib import Path

import pytest

from backend.config import JobConfig, apply_overrides, field_help, field_limits
from backend.workspace import PRESETS_DIR

PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


def test_there_are_presets():
    names = {p.stem for p in PRESETS}
    assert {"quickstart", "qlora", "dora", "pissa", "qlora-7b-24gb"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(preset: Path):
    text = preset.read_text()
    assert text.startswith("#"), "each preset starts with a header comment saying what it is for"
    config = JobConfig.from_yaml(preset)
    assert config.validate(cuda_available=False) == []


def test_bad_config_returns_all_errors_with_field_names():
    config = JobConfig.from_dict({
        "method": "superlora",
        "bogus": 1,
        "lora": {"r": 0, "alpah": 16, "dropout": 2.0, "target_modules": "everything"},
        "training": {"learning_rate": 0, "batch_size": "four", "eval_fraction": 0.9, "precision": "fp16"},
    })
    errors = config.validate(cuda_available=False)
    text = "\n".join(errors)
    for expected in ("method:", "bogus: unknown key", "lora.r:", "lora.alpah: unknown key (did you mean alpha?)",
                     "lora.dropout:", "lora.target_modules:", "training.learning_rate:", "training.batch_size:",
                     "training.eval_fraction:", "training.precision: fp16 needs a CUDA GPU"):
        assert expected in text, f"missing {expected!r} in {errors}"
    assert len(errors) >= 10


def test_unavailable_stage_is_reported():
    errors = JobConfig.from_dict({"stage": "ppo"}).validate(cuda_available=False)
    assert any(e.startswith("stage:") for e in errors)


def test_overrides_convert_types():
    data = apply_overrides({"training": {"max_steps": 40}}, [
        "training.max_steps=10", "training.learning_rate=1e-4", "lora.rslora=true",
        "lora.target_modules=[q_proj, v_proj]", "lora.loraplus_ratio=null", "name=my run"])
    config = JobConfig.from_dict(data)
    assert config.validate(cuda_available=False) == []
    assert config.training.max_steps == 10 and isinstance(config.training.max_steps, int)
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.lora.rslora is True
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.lora.loraplus_ratio is None
    assert config.name == "my run"


def test_override_without_equals_is_a_clear_error():
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides({}, ["training.max_steps"])


def test_yaml_round_trip(tmp_path):
    config = JobConfig.from_dict({"method": "dora", "lora": {"r": 8}, "training": {"max_steps": 3}})
    config.save(tmp_path / "job.yaml")
    again = JobConfig.from_yaml(tmp_path / "job.yaml")
    assert again == config and again.to_dict() == config.to_dict()


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: x\ntraining: {max_steps: 3\n")
    with pytest.raises(ValueError, match="line"):
        JobConfig.from_yaml(path)


def test_every_field_has_help():
    for name in ("model", "dataset", "stage", "method", "lora.r", "lora.alpha", "lora.target_modules",
                 "training.learning_rate", "training.max_length", "alignment.beta", "init_adapter"):
        assert len(field_help(name)) > 10
    assert field_limits("lora.r")["min"] == 1


def test_adalora_settings_are_checked_in_one_sentence_each():
    def problems(**data):
        return JobConfig.from_dict({"method": "adalora", **data}).validate(cuda_available=False)

    assert problems() == []
    assert any("adalora: needs training.max_steps" in p
               for p in problems(training={"max_steps": 0, "epochs": 1}))
    assert "adalora.target_r (8) must not exceed adalora.init_r (4)" in problems(adalora={"init_r": 4, "target_r": 8})
    assert any("their sum below 1" in p for p in problems(adalora={"warmup": 0.5, "final": 0.5}))


def test_prompt_tuning_settings_are_validated_in_one_sentence_each():
    from backend.config import JobConfig, resolve_batching

    good = JobConfig.from_dict({"method": "prompt_tuning", "prompt_tuning": {"virtual_tokens": 20, "init": "random"}})
    assert good.validate(cuda_available=False) == [] and good.prompt_tuning.virtual_tokens == 20
    bad = JobConfig.from_dict({"method": "prompt_tuning", "stage": "orpo",
                               "prompt_tuning": {"virtual_tokens": 0, "init": "vocab", "init_text": " "},
                               "training": {"batching": "padding_free"}}).validate(cuda_available=False)
    assert any(p.startswith("prompt_tuning.virtual_tokens: must be at least 1") for p in bad), bad
    assert any(p.startswith("prompt_tuning.init: 'vocab' is not one of text, random") for p in bad), bad
    assert any(p.startswith("training.batching: padding_free cannot") for p in bad), bad
    assert any(p.startswith("method: prompt_tuning cannot train ORPO") for p in bad), bad
    text = JobConfig.from_dict({"method": "prompt_tuning", "prompt_tuning": {"init_text": ""}})
    assert any(p.startswith("prompt_tuning.init_text:") for p in text.validate(cuda_available=False))
    long = JobConfig.from_dict({"method": "prompt_tuning", "prompt_tuning": {"virtual_tokens": 200},
                                "training": {"max_length": 128}})
    assert any("must leave room" in p for p in long.validate(cuda_available=False))
    # auto batching never packs rows behind virtual tokens (peft drops their position ids)
    assert resolve_batching("auto", False, 256) == "padding_free"
    assert resolve_batching("auto", False, 256, "prompt_tuning") == "group_by_length"
