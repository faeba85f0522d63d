"""The method sweep: every step through the real CLI on the tiny model, for a mergeable method and prompt tuning."""
import pytest

from bench import sweep


@pytest.mark.slow   # eight CLI processes: train, chat, export and GGUF export for two methods on the tiny model
def test_sweep_on_the_tiny_model(tiny_model_dir):
    text = sweep.main(steps=2, methods=["lora", "prompt_tuning"], gguf="f16", model=str(tiny_model_dir))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    lora, prompt = rows["lora"], rows["prompt_tuning"]
    assert "ok," in lora and "merged = adapter" in lora and "same answer" in lora and "ok in llama.cpp" in lora, lora
    assert "no merged column (not mergeable)" in prompt and "same answer" in prompt, prompt
    assert "refused: " in prompt and "not mergeable" in prompt, prompt
