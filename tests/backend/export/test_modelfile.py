"""The Ollama Modelfile's TEMPLATE renders conversations as the training chat template does: rendered by Go's own
text/template (ollama_template/main.go, given the data Ollama passes to a .Messages template) and compared with
transformers' apply_chat_template, for the bundled model's template and the real chat templates of several
families that llama.cpp keeps in models/templates (set up by studio.sh next to its converter)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from backend.export import llamacpp_lora
from backend.export.modelfile import modelfile_text
from tests import tools

TEMPLATES = llamacpp_lora.converter_dir() / "templates"
FAMILIES = ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "meta-llama-Llama-3.1-8B-Instruct",
            "meta-llama-Llama-3.3-70B-Instruct", "google-gemma-2-2b-it", "microsoft-Phi-3.5-mini-instruct",
            "mistralai-Mistral-Nemo-Instruct-2407", "HuggingFaceTB-SmolLM3-3B"]
CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42."},
     {"role": "user", "content": "And  twice that?\n"}],
    [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hi {{ there }}"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Thanks"}],
]


@pytest.fixture(scope="module")
def render_go(tmp_path_factory):
    """render(template, system, messages) -> the prompt Go's text/template makes of it, as Ollama would."""
    if tools.go() is None:
        pytest.skip(tools.GO_MISSING)
    binary = tmp_path_factory.mktemp("go") / "ollama_template"
    source = Path(__file__).parent / "ollama_template" / "main.go"
    built = subprocess.run([tools.go(), "build", "-o", str(binary), str(source)], capture_output=True, text=True,
                           timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(binary.parent),
                                             "GOCACHE": str(binary.parent / "cache"), "GOFLAGS": "-mod=mod"})
    assert built.returncode == 0, built.stderr

    def render(template: str, system: str, messages: list[dict]) -> str:
        done = subprocess.run([str(binary)], input=json.dumps({"template": template, "system": system,
                                                               "messages": messages}),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout
    return render


def parse(modelfile: str) -> tuple[str | None, str, list[str]]:
    """(TEMPLATE, SYSTEM, the stop parameters) of a Modelfile."""
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile, re.S | re.M)
    return (template.group(1) if template else None, system.group(1) if system else "",
            re.findall(r'^PARAMETER stop "(.*)"$', modelfile, re.M))


def tokenizer_with(tiny_model_dir, name: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if name is not None:
        path = TEMPLATES / f"{name}.jinja"
        if not path.is_file():
            pytest.skip(f"llama.cpp's chat templates are not set up ({path} is missing; run ./studio.sh test)")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    return tokenizer


@pytest.mark.parametrize("name", [None, *FAMILIES], ids=["smollm2", *FAMILIES])
def test_template_renders_every_conversation_as_the_chat_template_does(tiny_model_dir, render_go, name):
    tokenizer = tokenizer_with(tiny_model_dir, name)

    text = modelfile_text(tokenizer, "FROM ./model.gguf")

    template, system, stops = parse(text)
    assert template is not None, text
    no_system_turns = "covers conversations without one" in text
    trims = "trims the spaces around each message" in text
    checked = 0
    for messages in CONVERSATIONS:
        if no_system_turns and messages[0]["role"] == "system":
            continue
        if trims:   # said in the Modelfile: Ollama's template language has no trim
            messages = [{**m, "content": m["content"].strip()} for m in messages]
        try:
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a conversation this template refuses (Gemma: system turns)
            continue
        assert render_go(template, system, messages) == expected, (name, messages)
        checked += 1
    assert checked >= 2
    assert stops and all(stop in tokenizer.get_vocab() for stop in stops), stops


def test_bundled_template_keeps_its_default_system_and_stops_at_the_end_of_a_turn(tiny_model_dir):
    text = modelfile_text(tokenizer_with(tiny_model_dir, None), "FROM .")
    template, system, stops = parse(text)
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert stops == ["<|im_end|>", "<|im_start|>"] and "{{ range .Messages }}" in template


def test_a_template_that_cannot_be_repeated_per_turn_gets_no_template_and_says_why(tiny_model_dir):
    tokenizer = tokenizer_with(tiny_model_dir, None)
    # the answer to the last user turn depends on how many turns came before: no per-turn pattern
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}{{ loop.index }}: {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}assistant{{ messages|length + 1 }}: "
                               "{% endif %}")
    text = modelfile_text(tokenizer, "FROM .")
    assert 'TEMPLATE """' not in text and "# no TEMPLATE: the chat template cannot be repeated per turn" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
