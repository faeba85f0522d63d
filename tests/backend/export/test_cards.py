"""Every card's usage is checked against the real files it describes: the Python snippet of each card (the run's
card.md, the merged, adapter and GGUF exports' README.md) is extracted and run in a fresh interpreter with plain
transformers / peft, from the folder the card lies in; the GGUF card's Ollama / llama.cpp commands and its
Modelfile, which cannot run here, are checked for syntax and for naming files that exist."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

from backend import export, workspace
from backend.export import gguf as gguf_export

PROMPTS = ("Who are you?",)
RUNNER = textwrap.dedent('''
    import contextlib, io, json, os, sys
    out = {}
    for name, cwd, code in json.load(open(sys.argv[1])):
        os.chdir(cwd)
        buffer, ns = io.StringIO(), {"__name__": "__main__"}
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, name, "exec"), ns)
        out[name] = {"printed": buffer.getvalue(), "peft": "peft" in sys.modules, "model": type(ns["model"]).__name__,
                     "new_tokens": ns["output"].shape[1] - ns["inputs"]["input_ids"].shape[1],
                     "studio": any(m == "backend" or m.startswith(("backend.", "ui.", "workers.")) for m in sys.modules)}
    print(json.dumps(out))
''')


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


def shell_blocks(card: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", card, re.S)


def run_snippets(snippets: list[tuple[str, str, str]], tmp_path) -> dict:
    """(name, folder, code) run in order in one fresh interpreter (isolated: no LoRA Studio on sys.path)."""
    spec = tmp_path / "snippets.json"
    spec.write_text(json.dumps(snippets))
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    result = subprocess.run([sys.executable, "-I", str(script), str(spec)], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_modelfile(text: str, folder) -> None:
    """Ollama Modelfile syntax: known instructions, balanced triple quotes, a FROM that exists, Go template
    actions balanced ({{ if }} ... {{ end }})."""
    instructions = {"FROM", "TEMPLATE", "SYSTEM", "PARAMETER", "ADAPTER", "LICENSE", "MESSAGE"}
    body = re.sub(r'"""(.*?)"""', '""', text, flags=re.S)   # multi-line values out
    assert text.count('"""') % 2 == 0, text
    for line in body.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split()[0] in instructions, line
    source = re.search(r"^FROM (\S+)$", text, re.M).group(1)
    assert (folder / source).exists(), source
    for template in re.findall(r'TEMPLATE """(.*?)"""', text, re.S):
        actions = re.findall(r"{{\s*(\w+|\.\w+)", template)
        opened = sum(actions.count(action) for action in ("if", "range", "with"))   # `else if` needs no end
        assert opened == actions.count("end"), template
        assert template.count("{{") == template.count("}}")
    for stop in re.findall(r'^PARAMETER stop (.*)$', text, re.M):
        assert re.fullmatch(r'"[^"]+"', stop), stop


@pytest.mark.slow
def test_every_card_snippet_runs_against_the_exported_files(lora_job, tmp_path):
    merged = export.export_job(lora_job, "merged", "float32", prompts=PROMPTS)
    adapter = export.export_job(lora_job, "adapter")
    gguf = export.export_job(lora_job, "gguf", qtype="f16", prompts=PROMPTS)
    run_dir = workspace.run_dir(lora_job)
    cards = {"merged": (merged.folder, (merged.folder / "README.md").read_text()),
             "gguf": (gguf.folder, (gguf.folder / "README.md").read_text()),
             "adapter": (adapter.folder, (adapter.folder / "README.md").read_text()),
             "run card.md": (run_dir, (run_dir / "card.md").read_text())}
    snippets = []
    for name, (folder, card) in cards.items():
        blocks = python_blocks(card)
        assert len(blocks) == 1, (name, card)
        snippets.append((name, str(folder), blocks[0]))
    ran = run_snippets(snippets, tmp_path)        # merged first: it must not need peft
    for name in cards:   # each snippet loaded the files, answered and printed (the tiny model's text is noise)
        assert ran[name]["new_tokens"] > 0 and ran[name]["printed"], (name, ran[name])
        assert not ran[name]["studio"], name
    assert ran["merged"]["model"] == ran["gguf"]["model"] == "LlamaForCausalLM"
    assert ran["adapter"]["model"] == ran["run card.md"]["model"] == "PeftModelForCausalLM"
    assert not ran["merged"]["peft"] and not ran["gguf"]["peft"]
    assert "AutoModelForCausalLM.from_pretrained('.')" in cards["merged"][1]
    assert "PeftModel" not in cards["merged"][1] and "PeftModel" in cards["adapter"][1]

    # the run's card inside an export never tells the reader to load that export with peft
    for result in (merged, gguf):
        training = (result.folder / "training-card.md").read_text()
        assert "PeftModel" not in training and "README.md says how to load it" in training
        assert "## Provenance" in training and lora_job in training

    # GGUF: what cannot run here is at least well-formed and names the files that are there
    gguf_card = cards["gguf"][1]
    assert "passed — " in gguf_card and "greedy answers identical" in gguf_card
    (commands,) = shell_blocks(gguf_card)
    gguf_name = f"{lora_job}-f16.gguf"
    for line in commands.strip().splitlines():
        argv = shlex.split(line)
        if argv[0] == "ollama":
            assert argv[1] in ("create", "run") and argv[2] == "my-model"
            if argv[1] == "create":
                assert argv[3] == "-f" and (gguf.folder / argv[4]).is_file()
        else:
            assert argv[0] == "llama-cli" and argv[1] == "-m" and argv[2] == gguf_name
            assert (gguf.folder / argv[2]).is_file() and set(argv[3:]) <= {"-cnv"}
    check_modelfile((gguf.folder / "Modelfile").read_text(), gguf.folder)
    check_modelfile((merged.folder / "Modelfile").read_text(), merged.folder)


def test_training_card_of_an_older_run_loses_its_peft_line():
    old = ("# LoRA Studio adapter `j`\n\nLineage: a -> b.\n\nLoad it with `peft.PeftModel.from_pretrained(base_model, "
           "this_folder)`; the tokenizer in this folder carries the chat template used in training.\n\n"
           "## Provenance\n\n```yaml\njob_id: j\n```\n")
    text = export.training_card_for_export(old, "merged")
    assert "PeftModel" not in text and "## Provenance" in text and text.startswith("> This is the card")


def test_gguf_check_in_words_says_which_check_passed():
    q8 = {"qtype": "q8_0", "ok": True, "answers_match": [True, False, True], "disagreements": 0, "tie_margin": 1.0}
    text = gguf_export.describe(q8)
    assert text.startswith("passed — teacher-forced next-token check")
    assert "2/3 identical, which the check allows" in text and "near-tie" in text
    f16 = {"qtype": "f16", "ok": True, "answers_match": [True, True], "max_logit_diff": 0.04, "tolerance": 0.25}
    assert gguf_export.describe(f16) == ("passed — greedy answers identical to the merged model's on 2/2 prompts, "
                                         "largest |logit difference| 4.00e-02 <= tolerance 0.25.")
    assert gguf_export.describe({"qtype": "f16", "ok": False, "reason": "tokens differ"}) == "failed — tokens differ."
