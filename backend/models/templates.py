"""Chat templates a user can pick for a base model that has none.

The template used for training is saved with the adapter and every export, so the playground and the
exported model format prompts exactly as training did.
"""
from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

VICUNA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)

CHAT_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA, "vicuna": VICUNA}


# ---------------------------------------------------------------- tools, tool calls and reasoning

# Most small models' templates (SmolLM2's ChatML among them) write neither `tools` nor an assistant's
# `tool_calls`: apply_chat_template would drop both silently and the model would train on empty answers. For
# such a template the studio puts a prelude in front that rewrites the conversation into the Hermes / Qwen form
# (the most widely trained open format): the schemas in a system block, each call as <tool_call>{json}</tool_call>
# in the answer, each tool result as a user turn in <tool_response> tags, and a `reasoning_content` field as a
# <think> section. It is Jinja like the rest of the template, so it is saved with the adapter and embedded in
# every export: training, the playground, the API, llama.cpp and Ollama all render calls the same way. A
# conversation without tools, calls or reasoning fields renders exactly as before.
TOOL_FORMAT_MARK = "{#- lorastudio: hermes tool format -#}"
HERMES_TOOLS_TEXT = (
    "You may call one or more functions to answer. The functions are listed in <tools></tools>:\n<tools>\n' + "
    "(tools | map('tojson') | join('\\n')) + '\n</tools>\nTo call a function, answer with a JSON object of its "
    'name and arguments in <tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


def _prelude(tools: bool, calls: bool, reasoning: bool) -> str:
    lines = [TOOL_FORMAT_MARK, "{%- set ls_ns = namespace(msgs=[], changed=false) -%}",
             "{%- for ls_m in messages -%}"]
    if reasoning:       # first, so that a turn with reasoning and a call keeps both
        lines += [
            "{%- if ls_m.reasoning_content is defined and ls_m.reasoning_content is string -%}",
            "{%- set ls_m = {'role': ls_m.role, 'content': '<think>\\n' + ls_m.reasoning_content | trim + "
            "'\\n</think>\\n\\n' + ls_m.content, 'tool_calls': ls_m.tool_calls if ls_m.tool_calls is defined "
            "else none} -%}",
            "{%- set ls_ns.changed = true -%}",
            "{%- endif -%}",
        ]
    if calls:
        lines += [
            "{%- if ls_m.tool_calls is defined and ls_m.tool_calls -%}",
            "{%- set ls_ns.text = '' -%}",
            "{%- for ls_c in ls_m.tool_calls -%}",
            "{%- set ls_f = ls_c.function if ls_c.function is defined else ls_c -%}",
            "{%- set ls_ns.text = ls_ns.text + '\\n<tool_call>\\n' + ({'name': ls_f.name, 'arguments': "
            "ls_f.arguments} | tojson) + '\\n</tool_call>' -%}",
            "{%- endfor -%}",
            "{%- set ls_body = (ls_m.content + ls_ns.text) if ls_m.content else ls_ns.text[1:] -%}",
            "{%- set ls_m = {'role': ls_m.role, 'content': ls_body} -%}",
            "{%- set ls_ns.changed = true -%}",
            "{%- elif ls_m.role == 'tool' -%}",
            "{%- set ls_m = {'role': 'user', 'content': '<tool_response>\\n' + ls_m.content + "
            "'\\n</tool_response>'} -%}",
            "{%- set ls_ns.changed = true -%}",
            "{%- endif -%}",
        ]
    lines += ["{%- set ls_ns.msgs = ls_ns.msgs + [ls_m] -%}", "{%- endfor -%}"]
    if tools:
        lines += [
            "{%- if tools is defined and tools -%}",
            "{%- set ls_tools = '" + HERMES_TOOLS_TEXT + "' -%}",
            "{%- if ls_ns.msgs and ls_ns.msgs[0].role == 'system' -%}",
            "{%- set ls_ns.msgs = [{'role': 'system', 'content': ls_ns.msgs[0].content + '\\n\\n' + ls_tools}] "
            "+ ls_ns.msgs[1:] -%}",
            "{%- else -%}",
            "{%- set ls_ns.msgs = [{'role': 'system', 'content': ls_tools}] + ls_ns.msgs -%}",
            "{%- endif -%}",
            "{%- set ls_ns.changed = true -%}",
            "{%- endif -%}",
        ]
    # no whitespace control after the last tag: the model's own template follows byte for byte
    lines.append("{%- if ls_ns.changed -%}{%- set messages = ls_ns.msgs -%}{%- endif %}")
    return "\n".join(lines)


_PROBE_TOOLS = [{"type": "function", "function": {"name": "ls_probe_tool", "description": "a probe",
                                                  "parameters": {"type": "object", "properties": {}}}}]
_PROBE_CALL = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"type": "function", "function": {"name": "ls_probe_call", "arguments": {}}}]}]


def tool_support(tokenizer) -> tuple[bool, bool]:
    """(the template writes `tools`, the template writes assistant `tool_calls`), from rendering a probe."""
    try:
        text = tokenizer.apply_chat_template(_PROBE_CALL, tools=_PROBE_TOOLS, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render a call at all: the studio's format is used
        return False, False
    return "ls_probe_tool" in text, "ls_probe_call" in text


def add_tool_format(tokenizer) -> None:
    """Put the Hermes prelude in front of a chat template that lacks tools, calls or reasoning fields (see
    TOOL_FORMAT_MARK). Named template sets (a dict: transformers picks `tool_use` itself) are left alone."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or TOOL_FORMAT_MARK in template:
        return
    writes_tools, writes_calls = tool_support(tokenizer)
    reasoning = "reasoning_content" not in template
    if writes_tools and writes_calls and not reasoning:
        return
    tokenizer.chat_template = _prelude(not writes_tools, not writes_calls, reasoning) + template


def uses_tool_format(tokenizer) -> bool:
    """Whether the tokenizer's template has the studio's tool prelude (the model's own writes no tools)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and TOOL_FORMAT_MARK in template


# A template's thinking switch (Qwen3, SmolLM3, ...: the `enable_thinking` variable) fixed for a job: set
# at the top of the template, it holds for training and for everything that renders with the saved tokenizer.
THINKING_VARIABLE = "enable_thinking"


def has_thinking_switch(template) -> bool:
    return isinstance(template, str) and THINKING_VARIABLE in template


def set_thinking(template: str, on: bool) -> str:
    return f"{{%- set {THINKING_VARIABLE} = {'true' if on else 'false'} %}}{template}"
