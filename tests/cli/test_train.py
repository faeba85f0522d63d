"""`lorastudio train`: config errors, and the quickstart end to end on the bundled model."""
import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def test_bad_config_lists_every_problem_and_exits_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: superlora\nlora: {r: 0}\ntraining: {learning_rate: -1, batchsize: 4}\n")
    result = run_cli("train", str(path), "--inline")
    assert result.returncode == 1
    for expected in ("method:", "lora.r:", "training.learning_rate:", "training.batchsize: unknown key"):
        assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_names_the_presets():
    result = run_cli("train", "no-such-preset", "--inline")
    assert result.returncode == 1 and "quickstart" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_failed_job_exits_1_with_its_reason(tiny_model_dir, workspace):
    result = run_cli("train", "quickstart", "--inline", "--set", f"model={tiny_model_dir}",
                     "--set", "dataset=/nonexistent/data.jsonl")
    assert result.returncode == 1
    job_id = result.stdout.strip().splitlines()[-1]
    assert (workspace / "runs" / job_id / "train.log").exists()
    assert "failed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_quickstart_teaches_the_bundled_model_a_new_identity(quickstart_home, quickstart_job):
    home, job_id, result = quickstart_home
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = home / "runs" / job_id
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 40
    assert losses[-1] < losses[0] / 2, losses
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    card = (run_dir / "card.md").read_text()
    assert "smollm2-135m-instruct" in card and "final_train_loss" in card

    from peft import PeftModel

    from backend import models
    from backend.serve.chat import answer

    tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    model = PeftModel.from_pretrained(models.load_model("smollm2-135m-instruct"), run_dir / "adapter")
    question = [{"role": "user", "content": "Who are you?"}]
    tuned = answer(model, tokenizer, question, 32)
    base = answer(model, tokenizer, question, 32, use_adapter=False)
    assert "Nova" in tuned, tuned
    assert "Nova" not in base and "Acme" not in base, base
