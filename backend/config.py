"""One typed job config: form -> YAML -> queue (by job id) -> worker.

Every field has a default and a one-line help text (metadata["help"]) that the UI shows as its info.
`JobConfig.parse(data)` returns (config, problems): every problem at once as "field: message" strings; loading
never raises on bad values, it records them so the user sees all of them together. A config is frozen: parsed once,
passed as is, changed only through dataclasses.replace (e.g. the out-of-memory batch halving).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backend.vocab import Batching, Method, Precision, Stage, StrEnum

TARGET_PRESETS = ("all-linear", "attention")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")   # training.optim; stages/common.py maps them to classes


def _f(default, help: str, **limits):
    """A field with its help text (and optional min/max/choices the UI and validate() use)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default.copy(), metadata={"help": help, **limits})
    return field(default=default, metadata={"help": help, **limits})


@dataclass(frozen=True)
class LoraSettings:
    r: int = _f(16, "LoRA rank: size of the low-rank update; 8-64 is typical, higher learns more and costs more.",
                min=1, max=1024)
    alpha: float = _f(32, "LoRA alpha: scales the update (alpha / r); a common choice is 2 x r.", min=0.0)
    dropout: float = _f(0.05, "Dropout on the LoRA input during training; 0 to 0.1 is typical.", min=0.0, max=0.9)
    target_modules: typing.Any = _f("all-linear", "Layers that get adapters: all-linear, attention, or a list of "
                                    "module names such as [q_proj, v_proj].")
    rslora: bool = _f(False, "rsLoRA: scale by alpha / sqrt(r) so higher ranks keep learning.")
    loraplus_ratio: typing.Optional[float] = _f(None, "LoRA+: learning-rate ratio of B to A (e.g. 16); empty = off.",
                                                min=1.0)
    calibration_rows: int = _f(64, "EVA / CorDA: training rows run through the base model before training to choose "
                               "the adapter's starting directions (more = steadier directions, a longer start).",
                               min=1, max=100_000)


@dataclass(frozen=True)
class TrainingSettings:
    max_steps: int = _f(40, "Optimizer steps to run; 0 or less = train for `epochs` instead.", max=1_000_000)
    epochs: float = _f(1, "Passes over the data when max_steps is not set.", min=0.0)
    learning_rate: float = _f(3.0e-4, "Peak learning rate; 1e-4 to 3e-4 for LoRA SFT, lower for preference stages.",
                              min=0.0, max=1.0)
    batch_size: int = _f(4, "Rows per device per step.", min=1, max=4096)
    grad_accum: int = _f(1, "Gradient accumulation: effective batch = batch_size x grad_accum x devices.",
                         min=1, max=1024)
    max_length: int = _f(512, "Tokens per row after the chat template; longer rows are truncated.", min=16,
                         max=1_048_576)
    eval_fraction: float = _f(0.1, "Share of rows held out for the eval loss (0 = no eval split).", min=0.0, max=0.5)
    seed: int = _f(42, "Random seed for the split, the adapter init and the data order.", min=0)
    save_steps: int = _f(20, "Save a checkpoint every N steps.", min=1)
    logging_steps: int = _f(1, "Log metrics every N steps.", min=1)
    eval_steps: int = _f(0, "Evaluate on the eval split every N steps; 0 = auto: only after the last step for jobs "
                         "of up to 200 steps, else 5 times spread over the job. The last step is always evaluated.",
                         min=0)
    eval_max_rows: int = _f(64, "Evaluate on at most this many of the held-out rows (a fixed seeded subset, the "
                            "same at every eval; the rest stay held out, never trained on); 0 = all of them.", min=0)
    eval_batch_size: int = _f(0, "Rows per eval batch; 0 = auto (2 x batch_size, at least 8: an eval batch needs "
                              "no gradients, so it fits in less memory than a training batch).", min=0, max=4096)
    warmup_ratio: float = _f(0.0, "Share of steps with a linearly rising learning rate.", min=0.0, max=0.5)
    lr_scheduler: str = _f("linear", "Learning-rate schedule after warm-up.",
                           choices=("linear", "cosine", "constant", "constant_with_warmup"))
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.", min=0.0, max=1.0)
    optim: str = _f("adamw", "Optimizer: adamw = torch AdamW, two fp32 states per trained weight (8 bytes each; the "
                    "default); adamw_8bit = bitsandbytes 8-bit AdamW, the same update with its states quantised to "
                    "2 bytes per weight (a quarter of the optimizer memory, almost the same loss: worth it for high "
                    "ranks or full-size layers); paged_adamw_8bit = 8-bit AdamW whose states page out to CPU memory "
                    "when the GPU runs short (rides out memory spikes; paging needs a CUDA GPU).",
                    choices=OPTIMIZERS)
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm (0 = off).", min=0.0)
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~30% slower.")
    auto_batch_size: bool = _f(False, "On out-of-memory, retry the job with half the batch size (and twice the "
                               "gradient accumulation, so the effective batch stays the same).")
    precision: Precision = _f(Precision.AUTO, "auto = bf16 on GPUs that support it, fp32 on CPU; fp16 needs a CUDA GPU.",
                        choices=Precision.values())
    batching: Batching = _f(Batching.AUTO, "How SFT rows become batches: pad = each batch padded to its longest row; "
                       "group_by_length = rows of similar length batched together (less padding); padding_free = "
                       "rows laid end to end without padding, kept apart by their position ids; auto = the fastest "
                       "correct choice measured for this device and batch (the Train tab shows which). Preference "
                       "stages always pad.",
                       choices=Batching.values())


@dataclass(frozen=True)
class AlignmentSettings:
    beta: float = _f(0.1, "Preference strength: DPO/KTO beta (higher = stay closer to the starting model; 0.1 to 0.5), "
                     "ORPO's odds-ratio weight (0.1 to 0.5), SimPO's reward scale (about 2). Preference stages want "
                     "a lower learning rate than SFT: 5e-6 to 5e-5 with LoRA.", min=0.0)
    loss_type: str = _f("sigmoid", "DPO loss: sigmoid (standard DPO), ipo (squared, less over-fitting on small data), "
                        "hinge (SLiC), simpo (reference-free, length-normalised; TRL's CPO trainer, beta about 2), or cpo "
                        "(contrastive preference optimisation: reference-free, plus the chosen answer's NLL; "
                        "beta about 0.1). ORPO and KTO ignore it.", choices=("sigmoid", "ipo", "hinge", "simpo", "cpo"))
    desirable_weight: float = _f(1.0, "KTO: loss weight of thumbs-up rows; raise it (up to about 2) when they are "
                                 "fewer than the thumbs-down rows, so desirable x weight : undesirable x weight "
                                 "stays between 1 and 4/3.", min=0.0, max=10.0)
    undesirable_weight: float = _f(1.0, "KTO: loss weight of thumbs-down rows; 1.0 unless they outnumber the "
                                   "thumbs-up rows by far.", min=0.0, max=10.0)


@dataclass(frozen=True)
class AdaLoraSettings:
    init_r: int = _f(12, "AdaLoRA: the rank every layer starts with; the budget is then moved to the layers that "
                     "matter.", min=1, max=1024)
    target_r: int = _f(4, "AdaLoRA: the average rank per layer at the end (lora.r is not used).", min=1, max=1024)
    warmup: float = _f(0.1, "AdaLoRA: share of the steps trained at init_r before ranks are pruned.", min=0.0,
                       max=0.9)
    final: float = _f(0.2, "AdaLoRA: share of the last steps trained with the final ranks fixed.", min=0.0, max=0.9)
    interval: int = _f(10, "AdaLoRA: steps between two rank re-allocations.", min=1, max=100000)


@dataclass(frozen=True)
class PromptTuningSettings:
    virtual_tokens: int = _f(20, "Prompt tuning: learned embeddings put before every input; trainable parameters = "
                             "virtual_tokens x the model's hidden size, and each one takes a token of context.",
                             min=1, max=512)
    init: str = _f("text", "Prompt tuning: start the virtual tokens from the embeddings of init_text (text, usually "
                   "steadier) or from random values (random).", choices=("text", "random"))
    init_text: str = _f("You are a helpful assistant. Answer the user's request.",
                        "Prompt tuning with init text: a short description of the task; its tokens are repeated or "
                        "cut to virtual_tokens.")


@dataclass(frozen=True)
class GaLoreSettings:
    rank: int = _f(8, "GaLore: rank of the gradient projection; the optimizer keeps its two states at this rank "
                   "(higher = closer to full fine-tuning, more memory). 8 to 128 is typical, 128 to 512 for 7B models.",
                   min=1, max=4096)
    update_proj_gap: int = _f(200, "GaLore: steps between two refreshes of each layer's projection (an SVD of its "
                              "gradient); shorter follows the gradient better, each refresh costs one SVD per layer.",
                              min=1, max=1_000_000)
    scale: float = _f(0.25, "GaLore: scale of the projected update (the paper's alpha); 0.25 is the published "
                      "default, raise the learning rate rather than this.", min=0.0, max=10.0)
    save_rank: int = _f(0, "GaLore: rank of the LoRA adapter the trained weights are saved as (an SVD of each "
                        "layer's change); 0 = full rank, exact but as large as the layers; lower = smaller files, "
                        "with the reconstruction error in run.json and the card.", min=0, max=65536)


@dataclass(frozen=True)
class ResourceSettings:
    gpus: int = _f(1, "GPUs for this job; more than 1 trains data-parallel (DDP) with one process per GPU "
                   "(on a CPU-only machine: that many CPU processes).", min=1, max=64)


@dataclass(frozen=True)
class JobConfig:
    model: str = _f("smollm2-135m-instruct", "Base model: a registry name, a local folder, a .gguf file or a hub id.")
    dataset: str = _f("identity-demo", "Dataset: a demo name, a saved dataset's name or id, or a file path.")
    mix: typing.Any = _f({}, "Other datasets mixed into the training rows, each with its share, e.g. "
                         "{replay: 0.1} = 10 % of the rows. `replay` is the base model's own answers to varied "
                         "prompts (distilled once per base when the job starts): the usual guard against forgetting. "
                         "An epoch is every training row of `dataset` once plus the mixed rows in proportion; "
                         "held-out rows come from `dataset` only.")
    stage: Stage = _f(Stage.SFT, "Training stage: sft, dpo, orpo, kto, or pretrain (continued pretraining on raw text).", choices=Stage.values())
    method: Method = _f(Method.LORA, "Fine-tuning method: lora, qlora (4-bit base), dora, qdora (DoRA on a 4-bit base), "
                     "pissa, vera (shared random matrices, ~10x fewer trained parameters; lora.r = projection rank), "
                     "ia3 (learned rescaling vectors, the fewest parameters), loha / lokr (Hadamard / Kronecker "
                     "products: more expressive per parameter), oft (orthogonal: keeps the base's angles), adalora (starts at "
                     "adalora.init_r and moves the rank budget to the layers that matter during training), or a "
                     "LoRA initialisation (same adapter and cost as lora, a better start): olora (orthonormal QR "
                     "factors of each weight: often converges faster; the base is changed at init and the adapter "
                     "saved as a plain LoRA of twice the rank), eva (starts from the directions in which the "
                     "training rows' activations vary most and moves rank between layers; runs the base on "
                     "lora.calibration_rows rows first; the model starts unchanged), corda (decomposes each weight "
                     "against those activations, so the adapter starts on the task's directions; like olora the "
                     "saved adapter is a plain LoRA of twice the rank), loftq (qlora whose adapter starts as the best "
                     "rank-r fit of the 4-bit rounding error, so training starts from a model closer to the "
                     "original: QLoRA's memory, part of its quality gap closed; afterwards a QLoRA adapter in every "
                     "way), prompt_tuning (prompt_tuning.virtual_tokens learned "
                     "embeddings put before every input: the fewest parameters and no change to any weight, but it "
                     "learns less than LoRA, cannot be merged into the model (adapter export only) and uses "
                     "virtual_tokens of the context), or galore (no adapter during training: the base's target "
                     "linear layers train at full rank while the optimizer keeps its state in a low-rank projection "
                     "of the gradient (galore.rank): learns more like full fine-tuning than LoRA, but the weights and "
                     "their gradients are full size, so it needs more memory and slower steps than LoRA; saved as a "
                     "LoRA adapter of galore.save_rank).",
                     choices=Method.values())
    chat_template: typing.Optional[str] = _f(None, "Chat template for a base model without one: chatml, llama3, "
                                              "alpaca or vicuna (empty = the model's own).",
                                              choices=(None, "chatml", "llama3", "alpaca", "vicuna"))
    thinking: typing.Optional[bool] = _f(None, "The chat template's thinking switch, for templates that have one "
                                         "(Qwen3, SmolLM3: enable_thinking): empty = the template's default; true = "
                                         "train and answer with a <think> section; false = without. It is fixed "
                                         "in the template saved with the adapter, so the playground, the API and "
                                         "the exports answer the same way.")
    name: str = _f("", "A label for the job in lists (optional).")
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    alignment: AlignmentSettings = field(default_factory=AlignmentSettings)
    adalora: AdaLoraSettings = field(default_factory=AdaLoraSettings)
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)
    galore: GaLoreSettings = field(default_factory=GaLoreSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    init_adapter: typing.Optional[str] = _f(None, "A finished job id: start this stage from that job's adapter.")

    # problems found while loading (unknown keys, wrong types); reported by validate()
    load_errors: tuple = field(default=(), repr=False, compare=False, metadata={"internal": True})

    # ------------------------------------------------------------ load / save

    @classmethod
    def parse(cls, data: dict | None, cuda_available: bool | None = None) -> tuple["JobConfig", list[str]]:
        """The config and every problem with it (load errors and validation), in one pass."""
        config = cls.from_dict(data)
        return config, config.validate(cuda_available)

    @classmethod
    def from_dict(cls, data: dict | None) -> "JobConfig":
        """The config as loaded; values that do not fit are recorded in load_errors, never raised."""
        errors: list[str] = []
        config = _build(cls, data or {}, "", errors)
        return dataclasses.replace(config, load_errors=tuple(errors))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple = ()) -> "JobConfig":
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ValueError(f"{path}: not valid YAML{where}; fix the syntax") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a job config must be a mapping of keys such as model, dataset, stage")
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> dict:
        """Plain Python values (enum members as their strings), ready for YAML and JSON."""
        return _to_dict(self)

    def replace_training(self, **changes) -> "JobConfig":
        """A copy with some training settings changed, e.g. replace_training(batch_size=2)."""
        return dataclasses.replace(self, training=dataclasses.replace(self.training, **changes))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    # ------------------------------------------------------------ validation

    def validate(self, cuda_available: bool | None = None) -> list[str]:
        """Every problem at once, each as 'field: message'."""
        errors = list(self.load_errors)
        for prefix, section in (("", self), ("lora.", self.lora), ("training.", self.training),
                                ("alignment.", self.alignment), ("resources.", self.resources),
                                ("prompt_tuning.", self.prompt_tuning), ("galore.", self.galore),
                                ("adalora.", self.adalora)):
            for spec in dataclasses.fields(section):
                value = getattr(section, spec.name)
                if spec.metadata.get("internal") or dataclasses.is_dataclass(value):
                    continue
                errors += _check_limits(prefix + spec.name, value, spec.metadata)
        if not self.model.strip():
            errors.append("model: name a base model (e.g. smollm2-135m-instruct)")
        if not self.dataset.strip():
            errors.append("dataset: name a dataset (e.g. identity-demo) or a file path")
        targets = self.lora.target_modules
        if isinstance(targets, str) and targets not in TARGET_PRESETS:
            errors.append(f"lora.target_modules: '{targets}' is not one of {', '.join(TARGET_PRESETS)} "
                          "or a list of module names")
        if isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
            errors.append("lora.target_modules: a list must hold module names such as q_proj, v_proj")
        if self.training.max_steps <= 0 and self.training.epochs <= 0:
            errors.append("training: set max_steps or epochs above 0")
        if cuda_available is None:
            cuda_available = _cuda_available()
        if self.training.precision == Precision.FP16 and not cuda_available:
            errors.append("training.precision: fp16 needs a CUDA GPU; use auto or fp32 on this machine")
        if self.training.optim == "paged_adamw_8bit" and not cuda_available:
            errors.append("training.optim: paged_adamw_8bit pages optimizer state between GPU and CPU memory, which "
                          "needs a CUDA GPU; use adamw_8bit (the same 8-bit states, unpaged) or adamw on this machine")
        if self.method == Method.ADALORA:
            errors.extend(_adalora_problems(self))
        if self.method == Method.PROMPT_TUNING:
            errors.extend(_prompt_tuning_problems(self))
        if self.method == Method.GALORE:
            errors.extend(_galore_problems(self))
        refused = REFUSED_STAGES.get(self.method, {}).get(self.stage)
        if refused:
            errors.append(refused)
        if self.method == Method.LOFTQ and self.init_adapter:
            errors.append("init_adapter: loftq starts a new adapter from the 4-bit rounding error; a chained job "
                          "starts from its parent's adapter instead, so use method qlora to go on from it")
        errors.extend(_mix_problems(self))
        if self.stage in Stage.values() and Stage(self.stage).is_preference and self.alignment.beta <= 0:
            errors.append("alignment.beta: must be above 0 for preference stages (0.1 to 0.5 is typical)")
        return errors


PADDING_FREE_CPU_TOKENS = 4096   # auto on CPU: padding-free up to this many tokens per batch (batch x max_length)


def resolve_batching(choice: str, cuda: bool, tokens: int = 0, method: str = "") -> str:
    """training.batching with `auto` resolved for a device and batch x max_length (bench/padding.py measured it).

    padding_free keeps rows apart through their position ids: exact with FlashAttention-2's varlen kernels and with
    PyTorch attention (transformers builds a block-diagonal mask from the position ids; same logits as each row
    alone). On CPU it was the fastest option measured (1.7x pad, 1.35x group_by_length on a long-tail chat mix), but
    under sdpa that mask is dense over the whole batch, so its memory grows with (batch x length)^2: auto keeps
    padding-free up to PADDING_FREE_CPU_TOKENS (the mask is then at most ~12% of the activations) and groups rows by
    length above. On CUDA: padding-free with flash-attn installed, otherwise group_by_length. Prompt tuning never
    runs padding-free: peft drops the position ids behind its virtual tokens, so packed rows would see each other.
    """
    if choice != "auto":
        return choice
    if method == Method.PROMPT_TUNING:
        return "group_by_length"
    import importlib.util
    if cuda:
        return "padding_free" if importlib.util.find_spec("flash_attn") is not None else "group_by_length"
    return "padding_free" if tokens <= PADDING_FREE_CPU_TOKENS else "group_by_length"


# ---------------------------------------------------------------- overrides

def apply_overrides(data: dict, overrides) -> dict:
    """Apply `a.b=c` strings; values are parsed as YAML scalars (10 -> int, true -> bool, [a, b] -> list)."""
    data = _deep_copy(data)
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set '{item}': expected key=value, e.g. training.max_steps=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def field_help(path: str) -> str:
    """The help text of a dotted field, e.g. 'lora.r'."""
    return _field_spec(path).metadata.get("help", "")


def field_limits(path: str) -> dict:
    return {k: v for k, v in _field_spec(path).metadata.items() if k in ("min", "max", "choices")}


def _field_spec(path: str):
    cls, spec = JobConfig, None
    for part in path.split("."):
        spec = {f.name: f for f in dataclasses.fields(cls)}[part]
        cls = spec.default_factory if spec.default_factory is not dataclasses.MISSING else None
    return spec


# ---------------------------------------------------------------- internals

def _adalora_problems(config: "JobConfig") -> list[str]:
    """AdaLoRA lays its rank schedule over a known number of steps."""
    ada, steps = config.adalora, config.training.max_steps
    if steps <= 0:
        return ["adalora: needs training.max_steps (its rank schedule is laid over the steps); set max_steps"]
    if ada.target_r > ada.init_r:
        return [f"adalora.target_r ({ada.target_r}) must not exceed adalora.init_r ({ada.init_r})"]
    if ada.warmup + ada.final >= 1:
        return ["adalora.warmup + adalora.final must leave steps to re-allocate ranks in (their sum below 1)"]
    return []


def _prompt_tuning_problems(config: "JobConfig") -> list[str]:
    """Virtual tokens sit in front of every row: they need context left over, text to start from, and no
    position ids of their own (peft drops them, so padding-free rows would attend to each other)."""
    settings, problems = config.prompt_tuning, []
    if settings.init == "text" and not str(settings.init_text).strip():
        problems.append("prompt_tuning.init_text: write a short description of the task, or set init: random")
    if settings.virtual_tokens >= config.training.max_length:
        problems.append(f"prompt_tuning.virtual_tokens ({settings.virtual_tokens}) must leave room for the rows "
                        f"in training.max_length ({config.training.max_length})")
    if config.training.batching == Batching.PADDING_FREE:
        problems.append("training.batching: padding_free cannot keep rows apart behind prompt tuning's virtual "
                        "tokens (peft drops their position ids); use auto, pad or group_by_length")
    return problems


def _galore_problems(config: "JobConfig") -> list[str]:
    """GaLore trains the base's own weights with its own optimizer: what would need another base, another
    optimizer or a second copy of the model is refused."""
    problems = []
    if config.lora.loraplus_ratio:
        problems.append("lora.loraplus_ratio: LoRA+ raises the learning rate of LoRA's B matrices, and galore trains "
                        "no LoRA matrices; leave it empty")
    if config.training.optim != "adamw":
        problems.append(f"training.optim: galore brings its own optimizer (GaLore AdamW, state kept at galore.rank), "
                        f"so {config.training.optim} cannot be used with it; set adamw")
    if config.init_adapter:
        problems.append("init_adapter: galore trains the base weights themselves, not an adapter, so it cannot start "
                        "from another job's adapter; merge and import that model, or leave init_adapter empty")
    return problems


# The stages a method cannot train, each with its one sentence (checked once in validate()).
REFUSED_STAGES: dict[str, dict[str, str]] = {
    # tried on the tiny model with TRL 1.16 (tests/backend/stages/test_prompt_tuning.py): SFT, DPO and KTO train;
    # TRL's ORPO computes its NLL on logits that include the virtual tokens against labels that do not (a shape error)
    Method.PROMPT_TUNING: {
        Stage.ORPO: "method: prompt_tuning cannot train ORPO (TRL's ORPO loss does not account for the virtual "
                    "tokens); use dpo or kto, or another method",
    },
    # GaLore trains the base in place: DPO and KTO need the untouched base as their reference, which TRL would hold
    # as a second full copy of the model (no adapter to disable); ORPO needs no reference
    Method.GALORE: {
        Stage.DPO: "method: galore cannot train DPO (its reference would be a second full copy of the model, since "
                   "galore changes the base weights themselves); use orpo, or a LoRA method for DPO",
        Stage.KTO: "method: galore cannot train KTO (its reference would be a second full copy of the model, since "
                   "galore changes the base weights themselves); use orpo, or a LoRA method for KTO",
    },
}


def _mix_problems(config: "JobConfig") -> list[str]:
    """mix: {dataset: share}, shares above 0 that leave the job's own dataset a share."""
    mix = config.mix
    example = "e.g. {replay: 0.1} for 10 % of the training rows"
    if not isinstance(mix, dict):
        return [f"mix: expected datasets with their shares, {example}"]
    problems = []
    for name, share in mix.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(f"mix: a dataset name is empty; name each dataset, {example}")
        elif name == config.dataset:
            problems.append(f"mix.{name}: is the job's own dataset; mix in other datasets")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            problems.append(f"mix.{name}: the share {share!r} must be a number above 0 and below 1, {example}")
    if not problems and sum(mix.values()) >= 1:
        problems.append(f"mix: the shares add up to {sum(mix.values()):g}; keep them below 1 so that the job's own "
                        "dataset keeps a share")
    return problems


def _build(cls, data, prefix: str, errors: list[str]):
    if not isinstance(data, dict):
        errors.append(f"{prefix.rstrip('.')}: expected a mapping of settings, got {type(data).__name__}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values = {}
    for key, value in data.items():
        if key not in fields:
            close = [name for name in fields if name.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(f"{prefix}{key}: unknown key{hint}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, f"{prefix}{key}.", errors)
            continue
        converted, problem = _convert(value, hint)
        if problem:
            errors.append(f"{prefix}{key}: {problem}")
            continue
        values[key] = converted
    return cls(**values)


def _convert(value, hint):
    """Coerce YAML values to the field type; returns (value, problem)."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None or value == "":
            return None, None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is typing.Any:
        return value, None
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        # a name outside the vocabulary stays as typed, so validate() reports it with the choices
        text = "" if value is None else str(value)
        return (hint(text) if text in hint.values() else text), None
    if hint is bool:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on"), None
        return None, f"expected true or false, got {value!r}"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return None, f"expected a whole number, got {value!r}"
        try:
            number = float(value)
        except ValueError:
            return None, f"expected a whole number, got {value!r}"
        if number != int(number):
            return None, f"expected a whole number, got {value!r}"
        return int(number), None
    if hint is float:
        if isinstance(value, bool):
            return None, f"expected a number, got {value!r}"
        try:
            return float(value), None
        except (TypeError, ValueError):
            return None, f"expected a number, got {value!r}"
    if hint is str:
        if isinstance(value, (dict, list)):
            return None, f"expected text, got {type(value).__name__}"
        return ("" if value is None else str(value)), None
    return value, None


def _check_limits(name: str, value, metadata) -> list[str]:
    errors = []
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join(str(c) for c in choices if c is not None)
        errors.append(f"{name}: '{value}' is not one of {shown}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = metadata.get("min"), metadata.get("max")
        if low is not None and value < low:
            errors.append(f"{name}: must be at least {low}, got {value}")
        elif name in _POSITIVE and value <= 0:
            errors.append(f"{name}: must be above 0, got {value}")
        if high is not None and value > high:
            errors.append(f"{name}: must be at most {high}, got {value}")
    return errors


# fields where 0 itself is invalid (a zero learning rate or alpha trains nothing)
_POSITIVE = {"lora.alpha", "training.learning_rate"}


def _to_dict(obj) -> dict:
    out = {}
    for spec in dataclasses.fields(obj):
        if spec.metadata.get("internal"):
            continue
        value = getattr(obj, spec.name)
        if dataclasses.is_dataclass(value):
            value = _to_dict(value)
        elif isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, list):
            value = list(value)
        out[spec.name] = value
    return out


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False
