"""The method table (one row per PEFT method) and the chat templates a user can give a model without one."""
from __future__ import annotations

import pytest
from peft import LoraConfig

from backend.config import JobConfig
from backend.models import methods
from backend.models.templates import CHAT_TEMPLATES
from backend.vocab import Method


def test_every_method_has_one_row_and_builds_its_peft_config():
    assert set(methods.METHODS) == set(Method)
    for method in (Method.LORA, Method.DORA, Method.PISSA):
        config = JobConfig.from_dict({"model": "m", "dataset": "d", "method": method.value,
                                      "lora": {"r": 4, "alpha": 8}})
        plan = methods.build(config)
        assert isinstance(plan.peft_config, LoraConfig) and plan.peft_config.r == 4
        assert plan.peft_config.use_dora == (method == Method.DORA) and plan.quantization_config is None
    assert methods.spec("pissa").converts_at_save and methods.spec("qlora").four_bit
    with pytest.raises(ValueError):
        methods.spec("no-such-method")


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_each_template_renders_a_conversation_with_a_generation_prompt(name, smol_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}]
    text = smol_tokenizer.apply_chat_template(messages[:2], chat_template=CHAT_TEMPLATES[name], tokenize=False,
                                              add_generation_prompt=True)
    assert "Be brief." in text and "Hi?" in text and "Hello." not in text
    full = smol_tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATES[name], tokenize=False)
    assert full.startswith(text[:len(text) // 2]) and "Hello." in full
