"""The studio's tool format for chat templates that write no tools, and the thinking switch."""
from __future__ import annotations

import pytest

from backend import models
from backend.config import JobConfig
from backend.data.render import trained_segments
from backend.jobs import preflight
from backend.models import templates

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = [{"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 12}'},
        {"role": "assistant", "content": "It is 12 degrees.", "reasoning_content": "The tool says 12."}]
PLAIN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
WRITTEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

# a template that writes tools, calls and reasoning itself (the Qwen3 shape, cut down) with a thinking switch
OWN_TOOLS = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content is defined %}<think>{{ m.reasoning_content }}"
    "</think>{% endif %}{{ m.content }}{% if m.tool_calls is defined %}{% for c in m.tool_calls %}"
    "<call>{{ c.function | tojson }}</call>{% endfor %}{% endif %}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% if enable_thinking is defined and not enable_thinking %}"
    "<think></think>{% endif %}{% endif %}"
)


def test_a_template_without_tools_gets_the_hermes_format(tiny_model, tiny_model_dir):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert templates.tool_support(original) == (False, False)       # SmolLM2's ChatML drops both silently
    tokenizer = models.load_tokenizer(tiny_model)
    assert templates.uses_tool_format(tokenizer) and templates.tool_support(tokenizer) == (True, True)
    text = tokenizer.apply_chat_template(CALL, tools=[WEATHER], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou may call one or more functions")
    assert '"name": "get_weather", "description": "The weather in a city"' in text
    assert f"<|im_start|>assistant\n{WRITTEN_CALL}<|im_end|>" in text
    assert "<|im_start|>user\n<tool_response>\n{\"temp\": 12}\n</tool_response><|im_end|>" in text
    assert "<think>\nThe tool says 12.\n</think>\n\nIt is 12 degrees." in text
    # a conversation without tools renders exactly as the model's own template does
    for add in (False, True):
        assert (tokenizer.apply_chat_template(PLAIN, tokenize=False, add_generation_prompt=add)
                == original.apply_chat_template(PLAIN, tokenize=False, add_generation_prompt=add))
    # the call and the answer are trained; the schemas, the question and the tool's result are not
    trained = "".join(piece for piece, on in trained_segments(tokenizer, CALL, [WEATHER]) if on)
    assert WRITTEN_CALL in trained and "It is 12 degrees." in trained
    assert "get_weather\", \"description" not in trained and "temp" not in trained


def test_llama_cpp_renders_the_tool_format_as_training_does(tiny_model):
    """llama-cpp-python's chat formatter (what a GGUF export's users run) reads the saved template the same."""
    llama_chat_format = pytest.importorskip("llama_cpp.llama_chat_format")
    tokenizer = models.load_tokenizer(tiny_model)
    formatter = llama_chat_format.Jinja2ChatFormatter(tokenizer.chat_template, tokenizer.eos_token,
                                                      tokenizer.bos_token or "")
    prompt = CALL[:3]
    assert (formatter(messages=prompt, tools=[WEATHER]).prompt
            == tokenizer.apply_chat_template(prompt, tools=[WEATHER], tokenize=False, add_generation_prompt=True))


def test_a_template_that_writes_tools_is_left_alone(tiny_model):
    tokenizer = models.load_tokenizer(tiny_model)
    tokenizer.chat_template = OWN_TOOLS
    templates.add_tool_format(tokenizer)
    assert tokenizer.chat_template == OWN_TOOLS
    text = tokenizer.apply_chat_template(CALL, tools=[WEATHER], tokenize=False)
    assert '<call>{"name": "get_weather", "arguments": {"city": "Paris"}}</call>' in text


def test_the_thinking_switch_is_fixed_in_the_template(tiny_model):
    tokenizer = models.load_tokenizer(tiny_model)
    prompt = [{"role": "user", "content": "hi"}]
    for on, expected in ((None, "<assistant>"), (False, "<assistant><think></think>"), (True, "<assistant>")):
        template = OWN_TOOLS if on is None else templates.set_thinking(OWN_TOOLS, on)
        tokenizer.chat_template = template
        assert tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == (
            "<user>hi</user>" + expected)


def test_thinking_on_a_template_without_a_switch_is_one_sentence(tiny_model):
    expected = ("the chat template of 'tiny-llama' has no thinking switch (enable_thinking); leave thinking empty")
    with pytest.raises(models.ModelError, match="no thinking switch"):
        models.load_tokenizer(tiny_model, thinking=True)
    config, problems = JobConfig.parse({"model": tiny_model, "dataset": "identity-demo", "thinking": "off"})
    assert not problems and config.thinking is False
    assert f"thinking: {expected}" in preflight.problems(config)
