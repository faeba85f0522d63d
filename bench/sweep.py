"""Every method end to end through the command line, as a user runs it: train, answer, reload, merge, export.

    python -m bench.sweep [--steps 6] [--methods lora qlora ...] [--gguf q8_0] [--model smollm2-135m-instruct]

For each method of backend/models/methods.py, in a scratch workspace, each step its own `lorastudio` process:
1. `train quickstart --inline --set method=M --set training.max_steps=STEPS` (identity-demo, r=16 all-linear);
2. `chat JOB --prompt "Who are you?" --json`: base, adapter and merged answers, with the merge check (merged and
   unmerged logits compared; "not mergeable" for prompt tuning, which has no merged column);
3. `export JOB --json`: the adapter zip, whose folder is then loaded here with plain `PeftModel.from_pretrained` on
   the base model (outside the studio's own loading code; a 4-bit method's base in 4-bit through transformers'
   BitsAndBytesConfig, as its adapter column plays) and must give the adapter column's greedy answer;
4. `export JOB --merge --gguf GGUF --json`: the merged GGUF, which the export itself runs in llama.cpp
   (llama-cpp-python) against the merged model before offering it; a refusal is recorded as its sentence.
A cell says what happened; a failure keeps the command's last error line. No step is skipped on an earlier one's
failure when it can still run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bench.common import machine_line, markdown_table, registered_model, scratch_workspace

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Who are you?"
NEW_TOKENS = 24
# settings a method needs on top of quickstart's to train in a handful of steps
EXTRA = {"adalora": ["adalora.interval=2"], "vera": ["lora.r=64"], "prompt_tuning": []}


def all_methods() -> list[str]:
    from backend.models import methods
    return [str(method) for method in methods.METHODS]


def cli(*args: str, timeout: int = 1200) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, check=False)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error") or "Error" in line]
    return ((errors or lines or ["(no output)"])[-1])[:160].replace("|", "/")


def reload_with_peft(zip_path: Path, model: str, four_bit: bool) -> str:
    """The adapter zip's folder on the base model with plain transformers + peft, the way a user loads it (a 4-bit
    method's adapter on the base loaded in 4-bit NF4 with transformers' own BitsAndBytesConfig): the greedy answer."""
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend import models

    with tempfile.TemporaryDirectory() as folder:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(folder)
        config = next(Path(folder).rglob("adapter_config.json"))
        base_path = models.resolve(model).path
        tokenizer = AutoTokenizer.from_pretrained(config.parent)
        quantization = None
        if four_bit:
            from transformers import BitsAndBytesConfig
            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, quantization_config=quantization,
                                                    device_map={"": "cpu"} if four_bit else None)
        loaded = PeftModel.from_pretrained(base, config.parent).eval()
        ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = loaded.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def sweep_one(method: str, steps: int, gguf: str, model: str) -> dict:
    row = {"method": method}
    sets = [f"method={method}", f"training.max_steps={steps}", f"training.save_steps={steps}",
            f"model={model}"] + EXTRA.get(method, [])
    code, out, err, seconds = cli("train", "quickstart", "--inline", *[a for s in sets for a in ("--set", s)])
    if code != 0:
        row["train"] = "failed: " + last_error(err)
        return row
    job = out.strip().splitlines()[-1]
    row["train"] = f"ok, {seconds:.0f} s"
    code, out, err, seconds = cli("chat", job, "--prompt", PROMPT, "--json", "--max-new-tokens", str(NEW_TOKENS))
    answers = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    if code != 0:
        row["chat"] = "failed: " + last_error(err)
    else:
        check = answers.get("merge_verification")
        merged = ("merged = adapter" if check and check.get("ok") else
                  "merge check FAILED" if check else "no merged column (not mergeable)")
        row["chat"] = f"ok ({merged}, {seconds:.0f} s)"
        row["adapter_answer"] = answers.get("adapter", "")
    code, out, err, seconds = cli("export", job, "--json")
    if code != 0:
        row["peft reload"] = "export failed: " + last_error(err)
    else:
        try:
            from backend.models import methods
            answer = reload_with_peft(Path(json.loads(out.strip().splitlines()[-1])["zip"]), model,
                                      methods.spec(method).four_bit)
            same = answer.strip() == row.get("adapter_answer", "").strip()
            row["peft reload"] = "same answer" if same else f"DIFFERENT answer: {answer[:40]!r}"
        except Exception as error:          # noqa: BLE001 - the row records what went wrong
            row["peft reload"] = f"failed: {type(error).__name__}: {str(error)[:120]}"
    code, out, err, seconds = cli("export", job, "--merge", "--gguf", gguf, "--json")
    if code != 0:
        row["gguf"] = "refused: " + last_error(err)
    else:
        check = json.loads(out.strip().splitlines()[-1]).get("gguf_verification") or {}
        row["gguf"] = (f"ok in llama.cpp ({seconds:.0f} s)" if check.get("ok")
                       else f"check failed: {str(check.get('reason'))[:100]}")
    return row


def main(steps: int = 6, methods=None, gguf: str = "q8_0", model: str = "smollm2-135m-instruct") -> str:
    started = time.perf_counter()
    rows = []
    with scratch_workspace():
        from backend import data
        data.ensure_demo_datasets(["identity-demo"])
        model = registered_model(model)
        for method in methods or all_methods():
            print(f"   sweep: {method}", file=sys.stderr, flush=True)
            rows.append(sweep_one(method, steps, gguf, model))
    table = markdown_table(["method", "train", "chat: base / adapter / merged", "adapter zip in plain peft",
                            f"merged GGUF {gguf}"],
                           [[r["method"], r.get("train", ""), r.get("chat", "not run"), r.get("peft reload", "not run"),
                             r.get("gguf", "not run")] for r in rows])
    text = "\n".join([
        f"### Every method through the CLI ({model}, quickstart preset, {steps} steps each; "
        f"{len(rows)} methods in {(time.perf_counter() - started) / 60:.1f} min)", "", machine_line(), "", table, "",
        "Each cell is one `lorastudio` process (train, chat --json, export, export --merge --gguf); the adapter zip "
        "is reloaded here with plain peft and must give the adapter column's greedy answer. The GGUF export runs the "
        "file in llama.cpp itself before offering it."])
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--gguf", default="q8_0")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    main(args.steps, args.methods, args.gguf, args.model)
