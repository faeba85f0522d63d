"""The training utilities every stage shares: precision, the base model with its adapter, the training
arguments, the eval split, the reference policy, saving. The harness (backend.stages.harness) calls them in
order; a recipe calls the few it needs (prompt_fits, allow_reference_copy, choose_reference).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from backend import models
from backend.config import JobConfig
from backend.models import methods
from backend.vocab import Precision

log = logging.getLogger("lorastudio")


def precision_flags(config: JobConfig) -> dict:
    """bf16 / fp16 / use_cpu flags for TrainingArguments and the dtype to load the base in.

    use_cpu matters beyond speed: without it a torchrun launch on CPU trains as separate single processes.
    """
    import torch

    choice = config.training.precision
    cuda = torch.cuda.is_available()
    if choice == Precision.AUTO:
        choice = Precision.BF16 if cuda and torch.cuda.is_bf16_supported() else Precision.FP32
    dtype = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[choice]
    return {"bf16": choice == Precision.BF16, "fp16": choice == Precision.FP16, "dtype": dtype, "use_cpu": not cuda}


def load_peft_model(config: JobConfig, run_dir: Path, dtype, tokenizer=None, train_rows=()):
    """The base model (4-bit for qlora/qdora) with a trainable adapter: new, or the init_adapter's (GaLore: the base
    itself, with only its target layers trainable).

    Returns (model, model_info, initial_dir, init_facts): for a method that changes the base at init (PiSSA, OLoRA,
    CorDA) the initial adapter is saved so the final one can be converted to a plain LoRA relative to the
    untouched base. A data-driven init (EVA, CorDA) first runs the base on the first lora.calibration_rows training
    rows; a method's own init (LoftQ) rewrites the new adapter and reports facts for run.json (init_facts).
    """
    import torch
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    set_seed(config.training.seed)
    info = models.resolve(config.model)
    plan = methods.build(config, compute_dtype=dtype)
    device_map = {"": 0} if torch.cuda.is_available() else None
    if plan.quantization_config is not None and device_map is None:
        device_map = {"": "cpu"}
    base = models.load_model(config.model, dtype=dtype, quantization_config=plan.quantization_config,
                             device_map=device_map)
    if plan.quantization_config is not None:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=config.training.gradient_checkpointing)
    base.config.use_cache = False
    initial_dir, init_facts = None, {}
    spec = methods.spec(config.method)
    if spec.trains_base:
        from backend.stages import galore

        return galore.prepare(base, config), info, None, {}  # GaLore: the base's own layers train, no adapter
    if config.init_adapter:
        model = PeftModel.from_pretrained(base, init_adapter_dir(config.init_adapter), is_trainable=True)
    elif spec.init_from_data is not None:
        rows = calibration_ids(config, tokenizer, train_rows)
        log.info("%s init: running the base model on %d training rows", spec.label, len(rows))
        model = spec.init_from_data(base, plan.peft_config, rows, config.training.batch_size,
                                    tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    else:
        model = get_peft_model(base, plan.peft_config)
        if spec.init_weights is not None:
            init_facts = spec.init_weights(model, config)
    if spec.converts_at_save and not config.init_adapter:
        initial_dir = run_dir / "initial-adapter"
        adapter = model.peft_config["default"]
        init = adapter.init_lora_weights
        adapter.init_lora_weights = True  # saved as a plain LoRA so peft can convert against it later
        model.save_pretrained(initial_dir)
        adapter.init_lora_weights = init
    return model, info, initial_dir, init_facts


def calibration_ids(config: JobConfig, tokenizer, train_rows) -> list[list[int]]:
    """Token ids of the first lora.calibration_rows training examples, for a data-driven init (EVA, CorDA).

    SFT and pretrain examples are already tokenized; a preference example is its prompt with the preferred (DPO,
    ORPO) or given (KTO) answer, through the chat template, cut at max_length. The first rows of the seeded split:
    the same every run of the job, so a resumed job rebuilds the same starting point.
    """
    rows = []
    for example in list(train_rows)[:config.lora.calibration_rows]:
        if "input_ids" in example:
            ids = list(example["input_ids"])
        else:
            answer = example.get("chosen") or example.get("completion") or []
            ids = tokenizer.apply_chat_template(example["prompt"] + answer, tokenize=True, return_dict=True)["input_ids"]
        rows.append(ids[:config.training.max_length])
    if not rows:
        raise ValueError(f"method {config.method}: its init needs training rows to run the base model on; "
                         "the dataset has none left after the split")
    return rows


def init_adapter_dir(job_id: str) -> Path:
    """The saved adapter of a finished job, or a one-sentence error naming what is missing."""
    from backend import workspace

    adapter_dir = workspace.run_dir(job_id) / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"init_adapter: job '{job_id}' has no saved adapter ({adapter_dir}); pick a finished job")
    return adapter_dir


def check_init_adapter(config: JobConfig) -> None:
    """Before anything loads: a chained job must start from a finished job trained on the same base model."""
    if not config.init_adapter:
        return
    from backend.jobs.card import read_run_facts

    adapter_dir = init_adapter_dir(config.init_adapter)
    parent = read_run_facts(adapter_dir.parent).get("base_model") or {}
    info = models.resolve(config.model)
    ours, theirs = info.weights_sha256, parent.get("weights_sha256")
    if parent.get("name") and parent["name"] != info.name and not (ours and ours == theirs):
        raise ValueError(f"init_adapter: job '{config.init_adapter}' was trained on {parent['name']}, not "
                         f"{info.name}; choose a job of the same base model or set model: {parent['name']}")


# eval_steps 0 (auto): jobs up to this many steps evaluate only after the last one, longer ones AUTO_EVALS times
SHORT_JOB_STEPS = 200
AUTO_EVALS = 5


def eval_every(config: JobConfig, total_steps: int) -> int:
    """Steps between evaluations during training (0: none; the harness always evaluates after the last step)."""
    every = config.training.eval_steps
    if every > 0:
        return every
    if total_steps <= SHORT_JOB_STEPS:
        return 0
    return -(-total_steps // AUTO_EVALS)


def eval_batch_size(config: JobConfig) -> int:
    """Rows per eval batch: training.eval_batch_size, or auto = 2 x batch_size (no gradients, no optimizer)."""
    return config.training.eval_batch_size or 2 * config.training.batch_size


def eval_subset(examples: list, max_rows: int, seed: int) -> list:
    """At most max_rows of the held-out examples (0 = all): a seeded subset in their order, the same each eval."""
    import random

    if not max_rows or len(examples) <= max_rows:
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), max_rows))
    return [example for index, example in enumerate(examples) if index in keep]


def total_steps(config: JobConfig, train_rows: int, world_size: int = 1) -> int:
    """The optimizer steps the job will run: max_steps, or the epochs over the rows (an estimate for packing)."""
    settings = config.training
    if settings.max_steps > 0:
        return settings.max_steps
    per_step = settings.batch_size * settings.grad_accum * max(world_size, 1)
    return max(1, int(-(-train_rows // per_step) * settings.epochs))


def training_args(config: JobConfig, run_dir: Path, precision: dict, has_eval: bool, every: int | None = None) -> dict:
    """TrainingArguments every stage's TRL config takes, as keyword arguments (a recipe adds its own).

    Everything is set explicitly: TRL's preference configs default to bf16 and gradient checkpointing on, which
    would silently override the job's settings. every: steps between evaluations (eval_every; 0 = only the
    final one, which the harness runs after training).
    """
    settings = config.training
    every = settings.eval_steps if every is None else every
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=settings.max_steps if settings.max_steps > 0 else -1,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=eval_batch_size(config),
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=float(settings.warmup_ratio),  # a float below 1 is a ratio of the total steps
        weight_decay=settings.weight_decay,
        optim=TRAINER_OPTIM[settings.optim],
        max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps,
        save_steps=settings.save_steps,
        eval_strategy="steps" if has_eval and every > 0 else "no",
        eval_steps=every if every > 0 else None,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
        use_cpu=precision["use_cpu"],
        gradient_checkpointing=settings.gradient_checkpointing,
        max_length=settings.max_length,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # a NaN loss must reach the NaN guard, not be filtered out
        report_to=[],
        save_total_limit=3,
        disable_tqdm=False,
    )


def prompt_fits(tokenizer, prompt: list[dict], max_length: int, tools=None) -> bool:
    """Whether a prompt leaves room for at least one answer token within max_length."""
    kwargs = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kwargs)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) < max_length


def uniform_tools(examples: list[dict]) -> list[dict]:
    """A tools column in every row once any row has one (None = no tools): a table takes its columns from the
    first row, so a tools list on a later row would otherwise be dropped silently."""
    if any("tools" in example for example in examples):
        for example in examples:
            example.setdefault("tools", None)
    return examples


def allow_reference_copy(model) -> None:
    """Before a TRL preference trainer is built around a PeftModel.

    TRL adds a frozen "ref" adapter copied from "default" (see choose_reference). Adding an adapter re-runs its
    init; a PiSSA init would decompose the (already residual) base weights again and corrupt them, so the init
    is marked plain (B = 0) before the copy. The PiSSA conversion at save time does not need the marker.
    """
    adapter = model.peft_config["default"]
    if isinstance(getattr(adapter, "init_lora_weights", True), str):
        adapter.init_lora_weights = True


def choose_reference(model, config: JobConfig) -> str:
    """After the trainer is built: the reference policy of DPO / KTO, with no second copy of the base.

    - A new LoRA / DoRA / QLoRA adapter starts as a no-op, so the reference is the base itself: the "ref" copy
      TRL made is dropped and the reference pass runs with the adapter disabled.
    - A chained job (init_adapter) keeps "ref", a frozen copy of the starting adapter: the reference is base +
      SFT adapter, as the DPO recipe requires, over the same base weights.
    - PiSSA, OLoRA and CorDA keep "ref" too: their base holds the residual, so only base + initial adapter is the
      original model; LoftQ's too: its initial adapter cancels part of the 4-bit rounding error.
    """
    if "ref" not in model.peft_config:
        return "base model (adapter disabled)"
    if config.init_adapter:
        return f"base + adapter of job {config.init_adapter} (frozen copy)"
    if not methods.spec(config.method).adapter_starts_as_noop:
        return f"base + initial {methods.spec(config.method).label} adapter (frozen copy)"
    model.delete_adapter("ref")
    return "base model (adapter disabled)"


# training.optim -> the name transformers' TrainingArguments(optim=...) builds it by
TRAINER_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


def optimizer_class(config: JobConfig):
    """The torch optimizer class of training.optim, for optimizers the studio builds itself (LoRA+)."""
    if config.training.optim == "adamw":
        import torch
        return torch.optim.AdamW
    import bitsandbytes as bnb
    return bnb.optim.PagedAdamW8bit if config.training.optim == "paged_adamw_8bit" else bnb.optim.AdamW8bit


def loraplus_optimizer(model, config: JobConfig):
    """training.optim with B's learning rate raised by loraplus_ratio, or None to let the trainer build its own.

    peft builds LoRA+'s parameter groups around any optimizer class (8-bit and paged included), so the two compose.
    """
    if not config.lora.loraplus_ratio:
        return None
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model=model, optimizer_cls=optimizer_class(config),
                                     lr=config.training.learning_rate,
                                     loraplus_lr_ratio=config.lora.loraplus_ratio,
                                     weight_decay=config.training.weight_decay)


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded train / eval split; no eval split when the fraction would leave it empty."""
    import random

    if eval_fraction <= 0 or len(rows) < 2:
        return list(rows), []
    count = int(round(len(rows) * eval_fraction))
    if count < 1:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    eval_ids = set(order[:count])
    return ([r for i, r in enumerate(rows) if i not in eval_ids], [r for i, r in enumerate(rows) if i in eval_ids])


def method_training_args(config: JobConfig, model) -> dict:
    """TrainingArguments a method sets itself (GaLore: its optimizer on the target layers); {} for the rest."""
    if not methods.spec(config.method).trains_base:
        return {}
    from backend.stages import galore
    return galore.optimizer_args(model, config)


def save_trained(model, tokenizer, run_dir: Path, initial_dir: Path | None, config: JobConfig,
                 dtype) -> tuple[Path, dict]:
    """The adapter folder and the facts its saving adds to the results: a peft model's own adapter, or (GaLore) the
    trained layers' change as a LoRA adapter with its reconstruction error."""
    if methods.spec(config.method).trains_base:
        from backend.stages import galore
        return galore.save_adapter(model, tokenizer, run_dir, config, dtype)
    return save_adapter(model, tokenizer, run_dir, initial_dir), {}


def save_adapter(model, tokenizer, run_dir: Path, initial_dir: Path | None) -> Path:
    """Standard PEFT files plus the tokenizer (with the training chat template) in runs/<id>/adapter/.

    initial_dir: the initial adapter of a method that changed the base at init (PiSSA, OLoRA, CorDA); the saved
    adapter is then converted to a plain LoRA (twice the rank) against the original weights."""
    adapter_dir = run_dir / "adapter"
    staging = run_dir / ".adapter.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if initial_dir is not None:
        # convert the residual-base adapter into a plain LoRA against the original weights
        model.save_pretrained(staging, path_initial_model_for_weight_conversion=str(initial_dir),
                              selected_adapters=["default"])
    else:
        model.save_pretrained(staging, selected_adapters=["default"])  # not a preference stage's frozen "ref"
    tokenizer.save_pretrained(staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    if initial_dir is not None:
        shutil.rmtree(initial_dir, ignore_errors=True)
    return adapter_dir
