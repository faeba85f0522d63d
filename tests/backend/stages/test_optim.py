"""training.optim (issue 21): 8-bit AdamW trains on the tiny model with 8-bit states (bitsandbytes runs it on CPU),
composes with LoRA+, reaches TrainingArguments, and run.json / the card record it; paged is refused without CUDA."""
from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from backend import stages
from backend.config import OPTIMIZERS, JobConfig
from backend.metrics import Metrics
from backend.stages import common
from tests.backend.stages.test_sft_methods import tiny_config


class OptimizerProbe(TrainerCallback):
    """Records what the trainer really built: args.optim, the optimizer class, its state dtypes and lrs."""

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)          # accelerate wraps it
        self.optim, self.cls = args.optim, type(inner)
        self.dtypes = {str(v.dtype) for s in inner.state.values() for v in s.values() if hasattr(v, "dtype")}
        self.lrs = {group.get("initial_lr", group["lr"]) for group in inner.param_groups}   # before the schedule


@pytest.mark.parametrize("loraplus", [None, 16.0])
def test_adamw_8bit_trains_with_8bit_states_and_the_run_records_it(loraplus, tiny_model, workspace):
    # r=64: lora_A is 64 x 64 = 4096 elements, bitsandbytes' min_8bit_size (smaller tensors keep fp32 states)
    config = tiny_config(tiny_model, lora={"r": 64, "alpha": 64, "dropout": 0.0, "loraplus_ratio": loraplus},
                         training={"optim": "adamw_8bit", "max_steps": 6, "learning_rate": 5e-3, "eval_fraction": 0.0,
                                   "save_steps": 50})
    probe = OptimizerProbe()
    run_dir = workspace / "runs" / "optim"
    run_dir.mkdir(parents=True)
    stages.train(config, run_dir, callbacks=[probe])

    assert probe.cls.__module__.startswith("bitsandbytes")        # AdamW(optim_bits=8) or AdamW8bit (LoRA+)
    assert "torch.uint8" in probe.dtypes                               # the states really are 8-bit
    if loraplus:
        assert len(probe.lrs) > 1                                      # LoRA+'s faster B group, on 8-bit AdamW
    else:
        assert probe.optim == "adamw_bnb_8bit"                         # built by transformers from TrainingArguments
    losses = Metrics.read(run_dir / "metrics.jsonl").losses
    assert losses[-1] < losses[0]
    facts = json.loads((run_dir / "run.json").read_text())
    assert facts["optimizer"] == ("adamw_8bit with LoRA+ ratio 16" if loraplus else "adamw_8bit")
    assert facts["hyperparameters"]["training"]["optim"] == "adamw_8bit"
    assert f"optimizer {facts['optimizer']}." in (run_dir / "card.md").read_text()


def test_every_choice_reaches_training_arguments(tmp_path):
    from transformers import TrainingArguments

    for optim in OPTIMIZERS:
        config = JobConfig.from_dict({"training": {"optim": optim}})
        precision = {"bf16": False, "fp16": False, "use_cpu": True}
        args = common.training_args(config, tmp_path, precision, has_eval=False, every=0)
        args.pop("max_length")                                         # a TRL-only key (see pretrain.TRL_ONLY_ARGS)
        assert TrainingArguments(**args).optim == common.TRAINER_OPTIM[optim]


def test_paged_needs_cuda_and_unknown_optimizers_list_the_choices():
    paged = JobConfig.from_dict({"training": {"optim": "paged_adamw_8bit"}})
    assert paged.validate(cuda_available=False) == [
        "training.optim: paged_adamw_8bit pages optimizer state between GPU and CPU memory, which needs a CUDA GPU; "
        "use adamw_8bit (the same 8-bit states, unpaged) or adamw on this machine"]
    assert paged.validate(cuda_available=True) == []
    wrong = JobConfig.from_dict({"training": {"optim": "sgd"}, "lora": {"r": 0}})
    assert wrong.validate(cuda_available=False) == [       # every problem at once
        "lora.r: must be at least 1, got 0", "training.optim: 'sgd' is not one of adamw, adamw_8bit, paged_adamw_8bit"]
