"""The memory estimate: terms counted from the model's shape, and within 10% of the peaks measured on the bundled
model on a 2-core CPU machine (bench/estimator.py; the table is in bench/RESULTS.md)."""
import json

import pytest

from backend.models import estimate
from backend.config import JobConfig

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True, "dtype": "float32"}
MIB = 2 ** 20


@pytest.fixture
def smollm2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    return str(tmp_path)


def config(method="lora", length=256, batch=2, **training):
    return JobConfig.from_dict({"method": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
                                "training": {"max_length": length, "batch_size": batch, **training}})


def test_weights_follow_the_method_and_the_device(smollm2):
    lora, qlora = (estimate.estimate(config(m), model_path=smollm2) for m in ("lora", "qlora"))
    assert lora.weights / MIB == pytest.approx(513, rel=0.01)            # 134.5M parameters in fp32 on CPU
    assert qlora.weights / MIB == pytest.approx(165, rel=0.03)           # NF4 linear layers + fp32 embeddings
    assert qlora.overhead / MIB == pytest.approx(513, rel=0.01)          # the fp32 checkpoint stays mapped on CPU
    gpu = estimate.estimate(config("lora"), model_path=smollm2, cuda=True)
    assert gpu.weights == lora.weights / 2 and gpu.overhead == estimate.GPU_OVERHEAD   # bf16
    assert estimate.estimate(config("lora", precision="fp32"), model_path=smollm2, cuda=True).weights == lora.weights


def test_adapter_counts_lora_dora_and_qlora_dtypes(smollm2):
    lora, dora, qlora = (estimate.estimate(config(m), model_path=smollm2) for m in ("lora", "dora", "qlora"))
    assert lora.adapter_params == 30 * 16 * (576 * 9 + 192 * 2 + 1536 * 3)    # r x (in + out) of the 7 modules
    assert dora.adapter_params - lora.adapter_params == 30 * (576 * 3 + 192 * 2 + 1536 * 2)   # magnitudes
    assert qlora.adapter + qlora.optimizer == (lora.adapter + lora.optimizer) / 2              # bf16 adapter


def test_activations_grow_with_tokens_dora_and_shrink_with_checkpointing(smollm2):
    short, long = (estimate.estimate(config(length=n, batching="pad"), model_path=smollm2) for n in (256, 1024))
    assert 3.5 < long.activations / short.activations < 4.5
    dora = estimate.estimate(config("dora", batching="pad"), model_path=smollm2)
    assert dora.activations > 1.3 * short.activations
    checkpointed = estimate.estimate(config(batching="pad", gradient_checkpointing=True), model_path=smollm2)
    assert checkpointed.activations < 0.6 * short.activations      # the LM head's tiles remain


def test_without_a_config_the_parameter_count_still_gives_an_estimate():
    est = estimate.estimate(config(), parameters=7_000_000_000)
    assert 25 * 1024 ** 3 < est.weights < 28 * 1024 ** 3 and est.total > est.weights


@pytest.mark.parametrize("method", ["vera", "ia3", "loha", "lokr", "oft"])
def test_other_peft_families_are_counted_as_peft_builds_them(method, tiny_model_dir):
    """VeRA, IA3, LoHa, LoKr, OFT: the estimate's adapter size is what peft trains on the real model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from backend.config import JobConfig
    from backend.models import estimate, methods

    config = JobConfig.from_dict({"method": method, "lora": {"r": 8, "dropout": 0.0}})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), methods.build(config).peft_config)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate.estimate(config, model_path=str(tiny_model_dir)).adapter_params == trained
    assert trained < estimate.estimate(JobConfig.from_dict({"lora": {"r": 8}}), model_path=str(tiny_model_dir)
                                       ).adapter_params * (3 if method == "loha" else 1)


@pytest.mark.parametrize("method", ["olora", "eva", "corda"])
def test_lora_initialisations_cost_what_lora_costs_and_say_what_runs_at_start(method, smollm2):
    """OLoRA, CorDA: the same adapter as LoRA at this rank (EVA: at most 1.4x, its upper bound); the residual-base
    ones keep the original pages mapped like PiSSA, the data-driven ones say that the base runs on the calibration
    rows first."""
    lora, init = (estimate.estimate(config(m), model_path=smollm2) for m in ("lora", method))
    if method == "eva":   # the 210 x 16 rank budget at 2 x 16 in the 90 MLP modules, then 15 q / o projections
        assert init.adapter_params == 16 * (90 * 2 * (576 + 1536) + 15 * 2 * (576 + 576)) < 1.4 * lora.adapter_params
    else:
        assert init.adapter_params == lora.adapter_params and init.optimizer == lora.optimizer
    assert (init.overhead > lora.overhead) == (method in ("olora", "corda"))
    assert any("calibration_rows" in note for note in init.notes) == (method in ("eva", "corda"))


@pytest.mark.parametrize("method", ["olora", "corda"])
def test_residual_base_initialisations_train_lora_sized_adapters(method, tiny_model_dir):
    """What peft trains for OLoRA (and, after its calibration pass, CorDA) is the LoRA estimate's count."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from backend.models import methods

    job = JobConfig.from_dict({"method": method, "lora": {"r": 8, "dropout": 0.0}})
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    spec = methods.spec(method)
    peft_config = methods.build(job).peft_config
    if spec.init_from_data:
        model = spec.init_from_data(base, peft_config, [list(range(5, 37)), list(range(40, 60))], 2, 0)
    else:
        model = get_peft_model(base, peft_config)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == estimate.estimate(job, model_path=str(tiny_model_dir)).adapter_params


def test_eva_moves_rank_within_the_budget_and_under_the_estimate(tiny_model_dir):
    """EVA on the tiny model: peft keeps the rank budget (r x adapted modules, at most 2 x r each) but moves it (a
    module left at rank 0 is dropped), so the trained count differs from LoRA's; the estimate counts its upper
    bound, never less than what trains."""
    import torch
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from backend.models import methods

    job = JobConfig.from_dict({"method": "eva", "lora": {"r": 4, "dropout": 0.0}})
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    rows = [torch.randint(5, 500, (48,)).tolist() for _ in range(16)]
    model = methods.eva_init(base, methods.build(job).peft_config, rows, 4, 0)
    ranks = [m.r["default"] for m in model.modules() if isinstance(m, LoraLayer)]
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = estimate.estimate(JobConfig.from_dict({"lora": {"r": 4}}), model_path=str(tiny_model_dir))
    eva = estimate.estimate(job, model_path=str(tiny_model_dir))
    dims = estimate._dims(str(tiny_model_dir), 0)
    adapted = dims["layers"] * len(estimate._adapted(dims, job.lora.target_modules))   # before EVA drops any
    assert len(ranks) <= adapted and sum(ranks) <= 4 * adapted and max(ranks) <= 8     # rank 0: module dropped
    assert trained <= eva.adapter_params and lora.adapter_params <= eva.adapter_params <= 2 * lora.adapter_params
    assert any("2 x lora.r" in note for note in eva.notes)


def test_eight_bit_optimizers_keep_a_quarter_of_adamw_state(smollm2):
    adamw, eight, paged = (estimate.estimate(config(optim=o), model_path=smollm2, cuda=True)
                           for o in ("adamw", "adamw_8bit", "paged_adamw_8bit"))
    # 2 bytes (+ an fp32 scale per 256) instead of 8 per weight; lora_B of k / v (16 x 192 < 4096) keeps fp32 states
    small = 2 * 16 * 192
    assert eight.optimizer == 30 * (small * 8 + (adamw.adapter_params / 30 - small) * 2 * (1 + 4 / 256))
    assert 0.25 < eight.optimizer / adamw.optimizer < 0.3
    assert eight.adapter == adamw.adapter and paged.optimizer == eight.optimizer
    assert any("page out" in note for note in paged.notes)


def test_prompt_tuning_trains_virtual_tokens_x_hidden_and_lengthens_every_row(smollm2):
    """Prompt tuning: virtual_tokens x hidden size trainable parameters, no adapted layer, longer rows."""
    tuned = estimate.estimate(JobConfig.from_dict({"method": "prompt_tuning", "prompt_tuning": {"virtual_tokens": 20},
                                                   "training": {"max_length": 256, "batch_size": 2,
                                                                "batching": "pad"}}), model_path=smollm2)
    lora = estimate.estimate(config(batching="pad"), model_path=smollm2)
    assert tuned.adapter_params == 20 * 576
    assert tuned.adapter + tuned.optimizer == 20 * 576 * 4 * 4       # fp32 weights, gradients, two AdamW states
    assert any("20 virtual tokens" in note for note in tuned.notes)
    assert tuned.activations < lora.activations                       # no LoRA branches to keep for backward


@pytest.mark.parametrize("method", ["lora", "vera", "adalora", "ia3", "loha", "lokr", "oft"])
def test_saved_activations_match_what_autograd_keeps_per_family(method, tiny_model_dir):
    """Each peft family's activation terms against torch's saved tensors on the tiny model (CPU, fp32, no mask):
    per token and layer (IA3 keeps two outputs and the MLP's input; LoHa / LoKr / OFT one tensor per distinct
    input), and per step (LoHa / LoKr keep each module's full-size delta weight, OFT its rotation blocks)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from backend.models import methods

    # LoHa / LoKr / OFT take lora.dropout as module_dropout, which skips whole modules at random (what the seed
    # drew decided the count); the estimate counts none skipped, so they are checked without it
    dropout = 0.0 if method in ("loha", "lokr", "oft") else 0.05
    job = JobConfig.from_dict({"method": method, "lora": {"r": 4, "dropout": dropout, "target_modules": "all-linear"},
                               "adalora": {"init_r": 4, "target_r": 2}})
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           methods.build(job).peft_config)
    model.train()
    held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved, tokens = {}, 96

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in held:
            saved[tensor.untyped_storage().data_ptr()] = (tensor.untyped_storage().nbytes(), tokens in tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model.get_base_model().model(input_ids=torch.randint(5, 500, (1, tokens))).last_hidden_state
    dims = estimate._dims(str(tiny_model_dir), 0)
    per_token = sum(n for n, grows in saved.values() if grows) / tokens / dims["layers"]
    per_step = sum(n for n, grows in saved.values() if not grows)
    assert per_token == pytest.approx(estimate.saved_per_token_layer(dims, job, cuda=False), rel=0.1)
    expected = estimate.saved_per_step(dims, job)
    assert per_step == pytest.approx(expected, rel=0.15) if expected else per_step < 0.1 * per_token * tokens
    assert out.requires_grad


def test_cpu_heap_keeps_a_share_of_the_forward_that_follows_what_it_saves(tiny_model_dir, monkeypatch):
    """CPU: freed forward memory the heap keeps, HELD_FORWARD_SHARE_CPU of the saved activations, so a method with
    LoRA branches holds more than IA3; CUDA holds none (its caching allocator reuses the blocks)."""
    def held(method, cuda=False):
        job = config(method, batching="pad")
        with_heap = estimate.estimate(job, model_path=str(tiny_model_dir), cuda=cuda).activations
        monkeypatch.setattr(estimate, "HELD_FORWARD_SHARE_CPU", 0.0)
        without_heap = estimate.estimate(job, model_path=str(tiny_model_dir), cuda=cuda).activations
        monkeypatch.undo()
        return with_heap - without_heap

    dims = estimate._dims(str(tiny_model_dir), 0)
    saved = 2 * 256 * dims["layers"] * estimate.saved_per_token_layer(dims, config("lora", batching="pad"), cuda=False)
    assert held("lora") == pytest.approx(estimate.HELD_FORWARD_SHARE_CPU * saved)
    assert held("lora") > held("ia3") > 0
    assert held("lora", cuda=True) == held("ia3", cuda=True) == 0
