"""Pre-flight memory estimate, shown in the Train tab before a job starts.

estimate(config) -> Estimate: weights + adapter (weights, grads, AdamW states) + activations + overhead, in bytes,
and a fits / tight / will-not-fit verdict per device. Pure arithmetic from the model's config.json: no torch
import, no weights loaded. Each term is counted from what the libraries hold (see bench/estimator.py, which
measures it; bench/RESULTS.md publishes estimate vs measured for LoRA / QLoRA / DoRA / PiSSA at two lengths):

* weights: every parameter in the compute dtype (fp32 on CPU, bf16 on GPU); QLoRA / QDoRA: the decoder's linear
  layers as NF4 (half a byte + one fp32 absmax per 64 weights), the rest (embeddings, norms, an untied head) in
  fp32, where peft's prepare_model_for_kbit_training puts them.
* adapter: LoRA A/B (+ DoRA magnitudes) with their gradients and two AdamW states, fp32 (bf16 for QLoRA: TRL
  casts a quantized model's adapter to bf16); training.optim adamw_8bit / paged_adamw_8bit: 2 bytes of state per
  trained weight (+ a block scale), except tensors under bitsandbytes' min_8bit_size, which stay fp32.
* activations: the tensors autograd keeps for the backward pass, per token and layer, counted from the Llama
  layer with peft's LoRA on it and checked against torch.autograd.graph's saved tensors on the bundled model:
  the RMSNorms' fp32 inputs, sdpa's q / k / v / out (k / v repeated to every head when padding-free needs a
  mask), the MLP's gate / up / silu, each adapted layer's dropout output and mask (a float tensor on CPU, bool on
  CUDA) and lora_A output, in the adapter's dtype; DoRA adds three outputs per adapted layer (QDoRA one). Plus
  the LM head: TRL scores tokens in [4096 x 32768] tiles instead of materialising the logits; on CPU the torch
  fallback of that kernel keeps about 10 tile-sized temporaries (forward and backward, the same for LoRA, IA3 and
  prompt tuning: bench/estimator_phases.py). On CPU only, plus the forward's freed temporaries that glibc's heap
  keeps resident at the peak: HELD_FORWARD_SHARE_CPU (0.3) of the saved activations above, so a method whose
  forward keeps less (IA3, prompt tuning: no LoRA branch) also leaves less behind. Padding-free under sdpa adds a
  (tokens x tokens) float mask per layer. Gradient checkpointing keeps one hidden state per layer and recomputes
  one layer.
* overhead: CPU: nothing measurable beyond the terms above (tokenizer, rows and trainer fit in what the imports
  left free), plus the checkpoint pages that stay memory-mapped (in RSS, reclaimable) once QLoRA has quantized
  the weights or PiSSA has written its residual weights;
* GaLore: the target layers' own weights train, so the adapter term is their full-size gradients (not live at the
  activations' peak, but their memory stays resident in the heap from the step before) and the optimizer
  term AdamW's two states at galore.rank (rank x the larger side) plus the projection (with fp32 parameters the
  whole square SVD factor it is a view of: the smaller side squared; rank x the smaller side otherwise);
  the activations keep each trained layer's input instead of LoRA branches (counted from the layer, not measured);
  GPU: the CUDA context and the caching allocator's reserve.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from backend.models import methods
from backend.vocab import Stage

GIB = 1024 ** 3
MIB = 1024 ** 2
TIGHT_AT = 0.80                 # above this share of a device's memory: "tight"
GPU_OVERHEAD = 0.5 * GIB        # CUDA context + caching-allocator reserve
CPU_OVERHEAD = 0.0              # measured: tokenizer, rows and trainer fit in what the imports left free
NF4_BYTES = 0.5 + 4 / 64        # 4-bit weights + one fp32 absmax per block of 64
LM_HEAD_TOKENS, LM_HEAD_VOCAB = 4096, 32768   # TRL's fused LM head tile (trl.kernels.chunked_logprob)
# measured (bench/estimator_phases.py): the torch fallback's own temporaries, forward and backward, ~10 tiles for LoRA,
# IA3 and prompt tuning alike
LM_HEAD_TILES_CPU = 10
# CPU: memory the forward allocates and frees (adapter branches, sdpa / MLP intermediates) that glibc's heap keeps
# resident, as a share of the saved activations. The forward grows the RSS by about twice what it saves (LoRA 2018 MiB
# for 1018 saved, IA3 1167 / 542, prompt tuning 1036 / 464), and malloc_trim(0) gives back 847 / 331 / 364 MiB of it:
# the held memory follows the forward's size. What of it adds to the peak (the LM head reuses part) is LoRA's
# calibration: the 5 tiles the earlier fixed term (15) held beyond the head's 10, 320 MiB at 2 x 256 tokens (1280 at
# 2 x 1024) on 1064 (4256) MiB of saved activations: 0.30 at both lengths. CUDA's caching allocator reuses its blocks.
# No single share fits galore too (bench/RESULTS.md): its excess is not forward memory.
HELD_FORWARD_SHARE_CPU = 0.3
EIGHT_BIT_BYTES = 2 * (1 + 4 / 256)   # 8-bit AdamW: two uint8 states + an fp32 absmax per block of 256, each
MIN_8BIT_SIZE = 4096            # bitsandbytes keeps fp32 states for tensors with fewer elements
LM_HEAD_TILES_GPU = 2           # Triton kernels: the tile buffer, forward and backward


@dataclass
class Estimate:
    weights: float
    adapter: float
    optimizer: float
    activations: float
    overhead: float
    adapter_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.adapter + self.optimizer + self.activations + self.overhead


@dataclass
class Device:
    name: str
    total_bytes: float


def _dims(model_path: str | None, parameters: int) -> dict:
    """Architecture numbers from config.json, or rough llama-like ones from the parameter count."""
    cfg = {}
    if model_path and Path(model_path, "config.json").is_file():
        try:
            cfg = json.loads(Path(model_path, "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
    cfg = cfg.get("text_config") or cfg
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or 0
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0
    if not hidden or not layers:
        # a llama-like shape with params ~ 12 x layers x hidden^2
        params = parameters or 135_000_000
        layers = layers or 30
        hidden = hidden or int((params / (12 * layers)) ** 0.5)
    heads = cfg.get("num_attention_heads") or max(hidden // 64, 1)
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg.get("intermediate_size") or 4 * hidden
    vocab = cfg.get("vocab_size") or 32000
    q, kv = heads * head_dim, kv_heads * head_dim
    linear = layers * (2 * hidden * q + 2 * hidden * kv + 3 * hidden * inter)   # q, o, k, v, gate, up, down
    tied = cfg.get("tie_word_embeddings", True)
    stored = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    params = parameters or linear + vocab * hidden * (1 if tied else 2)
    return {"hidden": hidden, "layers": layers, "inter": inter, "q": q, "kv": kv, "vocab": vocab,
            "params": params, "linear": min(linear, params), "checkpoint_bytes": 4 if "32" in stored else 2}


def adapter_parameters(dims: dict, r: int, target_modules) -> int:
    return dims["layers"] * sum(r * (a + b) for a, b in _adapted(dims, target_modules).values())


def eva_adapter_parameters(dims: dict, r: int, target_modules) -> int:
    """EVA's upper bound: peft keeps the rank budget (r x adapted modules) but moves it to the modules whose inputs
    vary most, at most 2 x r each (EvaConfig's rho = 2), so the count is only known after the calibration pass.
    The largest it can be: the budget filled into the modules with the most parameters per rank first."""
    per_rank = sorted((a + b for a, b in _adapted(dims, target_modules).values()), reverse=True) * dims["layers"]
    per_rank.sort(reverse=True)
    budget, total = r * len(per_rank), 0
    for size in per_rank:
        rank = min(2 * r, budget)
        total, budget = total + rank * size, budget - rank
    return total


def counted_adapter_parameters(model_path: str | None, config) -> int | None:
    """Trainable parameters of the job's peft config on the model's architecture, counted by peft itself on the
    meta device (no weights read): exact for the families without a closed formula here (VeRA, IA3, LoHa, LoKr,
    OFT). None without the model's config.json."""
    if not model_path or not Path(model_path, "config.json").is_file():
        return None
    lora = config.lora
    targets = tuple(lora.target_modules) if isinstance(lora.target_modules, list) else lora.target_modules
    return _count_on_meta(str(model_path), str(config.method), lora.r, lora.alpha, targets)


@functools.lru_cache(maxsize=32)
def _count_on_meta(model_path: str, method: str, r: int, alpha: float, targets) -> int | None:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from backend.config import JobConfig
    config = JobConfig.from_dict({"method": method, "lora": {"r": r, "alpha": alpha, "dropout": 0.0,
                                                              "target_modules": list(targets)
                                                              if isinstance(targets, tuple) else targets}})
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path, trust_remote_code=False))
            peft_model = get_peft_model(model, methods.spec(method).build_peft_config(config))
    except Exception:  # noqa: BLE001 - an architecture peft cannot adapt this way: the caller falls back
        return None
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def _adapted(dims: dict, target_modules) -> dict:
    """(in, out) of each adapted module of one layer."""
    h, i, q, kv = dims["hidden"], dims["inter"], dims["q"], dims["kv"]
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    if target_modules == "all-linear":
        names = list(shapes)
    elif target_modules == "attention":
        names = ["q_proj", "k_proj", "v_proj", "o_proj"]
    else:
        names = [m for m in (target_modules or []) if m in shapes] or ["q_proj", "v_proj"]
    return {name: shapes[name] for name in names}


def saved_per_token_layer(dims: dict, config, cuda: bool, masked: bool = False) -> float:
    """Bytes autograd keeps for the backward pass, per token and decoder layer (no gradient checkpointing).

    Counted from the Llama layer with peft's LoRA on it and checked against torch.autograd.graph's saved tensors
    on the bundled model (CPU, fp32: 69.5 KB per token and layer for LoRA r=16 all-linear, 134 KB for DoRA)."""
    h, i, q, kv = dims["hidden"], dims["inter"], dims["q"], dims["kv"]
    act = 2 if cuda and config.training.precision != "fp32" else 4
    adapter = 2 if methods.spec(config.method).four_bit else 4     # peft runs the LoRA branch in the adapter's dtype
    saved = 2 * h * 4                  # the two RMSNorms keep their fp32 input
    # sdpa keeps q, k, v and out; with a mask (padding-free) transformers repeats k / v to every head first. A
    # worst-case batch (every row at max_length) has no padding, so padded batches need no mask.
    saved += (2 * q + 2 * (q if masked else kv)) * act
    saved += 3 * i * act               # gate, up, silu(gate)
    if methods.spec(config.method).trains_base:
        # GaLore: no LoRA branch; a trained layer keeps its input for its weight gradient: the normed hidden state
        # (once for q / k / v, once for gate / up) and down_proj's input; o_proj's input is sdpa's output, kept above
        names = _adapted(dims, config.lora.target_modules)
        saved += h * act * (any(n in names for n in ("q_proj", "k_proj", "v_proj"))
                            + any(n in names for n in ("gate_proj", "up_proj")))
        return saved + (i * act if "down_proj" in names else 0)
    family = methods.spec(config.method).peft_type
    adapted = {} if family == "PROMPT_TUNING" else _adapted(dims, config.lora.target_modules)  # prompt tuning: none
    if family == "IA3":
        # a learned vector times each adapted output (k, v), or the MLP down projection's input: that tensor is kept
        ia3 = ({"k_proj": kv, "v_proj": kv, "down_proj": i} if config.lora.target_modules == "all-linear"
               else {name: out for name, (_, out) in adapted.items()})
        return saved + sum(ia3.values()) * adapter
    if family in ("LOHA", "LOKR", "OFT"):
        # the delta weight (LoHa, LoKr) or the rotation (OFT) multiplies each module's input, which is then kept:
        # one tensor per distinct input (q / k / v share the norm's output, gate / up the other; o_proj reads sdpa's)
        inputs = {"attention": h if {"q_proj", "k_proj", "v_proj"} & set(adapted) else 0,
                  "mlp": h if {"gate_proj", "up_proj"} & set(adapted) else 0, "down": i if "down_proj" in adapted else 0}
        return saved + sum(inputs.values()) * adapter
    r = config.adalora.init_r if family == "ADALORA" else config.lora.r     # VeRA and AdaLoRA run LoRA's branch
    for d_in, d_out in adapted.values():
        saved += r * adapter                               # lora_A's output
        if config.lora.dropout > 0:
            # dropout's output, and its mask: a float tensor on CPU, a bool one from CUDA's fused kernel
            saved += d_in * adapter + d_in * (1 if cuda else adapter)
        if methods.spec(config.method).dora:
            # DoRA: base output, LoRA output, their scaled sum; on a 4-bit base (QDoRA) one d_out tensor per module
            # (counted with torch.autograd.graph's saved tensors on the tiny model: 4 x sum(d_out) per token and layer)
            saved += (1 if methods.spec(config.method).four_bit else 3) * d_out * act
    return saved


def saved_per_step(dims: dict, config) -> float:
    """Bytes autograd keeps for the backward pass that do not grow with the tokens, measured on the bundled model:
    LoHa / LoKr build each adapted module's delta weight (the module's full size) and keep it; OFT keeps its
    block rotations and the Cayley-Neumann powers behind them (about 4 x 32 x d_in per module)."""
    family = methods.spec(config.method).peft_type
    adapter = 2 if methods.spec(config.method).four_bit else 4
    adapted = _adapted(dims, config.lora.target_modules).values()
    if family in ("LOHA", "LOKR"):
        return dims["layers"] * sum(d_in * d_out for d_in, d_out in adapted) * adapter
    if family == "OFT":
        return dims["layers"] * sum(4 * methods.OFT_BLOCK_SIZE * d_in for d_in, _ in adapted) * adapter
    return 0.0


def estimate(config, model_path: str | None = None, parameters: int = 0, cuda: bool = False) -> Estimate:
    """Memory for one device (data-parallel jobs: each device holds all of this)."""
    dims = _dims(model_path, parameters)
    t = config.training
    act_bytes = 2 if cuda and t.precision != "fp32" else 4       # bf16 / fp16 on GPU, fp32 on CPU
    quantized = methods.spec(config.method).four_bit
    mapped = 0.0
    notes = []
    if quantized:
        weights = dims["linear"] * NF4_BYTES + (dims["params"] - dims["linear"]) * 4
        if not cuda:   # the checkpoint read while quantizing stays memory-mapped: file pages in RSS (reclaimable)
            mapped = dims["params"] * dims["checkpoint_bytes"]
    else:
        weights = dims["params"] * act_bytes
        if methods.spec(config.method).converts_at_save and not cuda and not config.init_adapter:
            # the residual weights (PiSSA, OLoRA, CorDA) are new memory; the original pages, read at init, stay mapped
            mapped = dims["linear"] * dims["checkpoint_bytes"]

    prompt_tokens = 0
    n_adapter = adapter_parameters(dims, config.lora.r, config.lora.target_modules)
    if methods.spec(config.method).peft_type == "PROMPT_TUNING":
        # one learned embedding per virtual token, and every row grows by that many tokens
        prompt_tokens = config.prompt_tuning.virtual_tokens
        n_adapter = prompt_tokens * dims["hidden"]
        notes.append(f"prompt tuning: {prompt_tokens} virtual tokens in front of every row (counted in the activations)")
    elif config.method == "eva":
        # the rank moves between modules after the calibration pass: count the most it can cost (at most 1.4x
        # LoRA's adapter on a llama shape, about 1% of the total)
        n_adapter = eva_adapter_parameters(dims, config.lora.r, config.lora.target_modules)
        notes.append("EVA moves rank between layers after its calibration pass: the adapter is counted at the most "
                     "it can take (the rank budget in the largest modules, up to 2 x lora.r each)")
    elif methods.spec(config.method).peft_type != "LORA":
        counted = counted_adapter_parameters(model_path, config)
        if counted is not None:
            n_adapter = counted
        else:
            notes.append("the adapter's size is LoRA's at this rank: without the model's config.json the "
                         f"{methods.spec(config.method).label} adapter could not be counted")
    galore_state = 0
    if methods.spec(config.method).trains_base:
        # GaLore: the target layers' full weights train (already counted in `weights`); AdamW's two states live in
        # each gradient's projection to galore.rank (rank x the larger side), plus the projection matrix
        layers = _adapted(dims, config.lora.target_modules).values()
        n_adapter = dims["layers"] * sum(d_in * d_out for d_in, d_out in layers)
        rank = config.galore.rank
        # galore-torch's projector keeps `Vh[:rank]` / `U[:, :rank]` of each gradient's SVD: with fp32 parameters
        # that slice is a view, so the whole square factor (smaller side squared) stays alive; with bf16 / fp16 ones
        # it is cast, i.e. copied, and only rank x the smaller side is kept
        kept = (lambda d: min(d) * min(d)) if act_bytes == 4 else (lambda d: min(rank, min(d)) * min(d))
        galore_state = dims["layers"] * sum(2 * min(rank, min(d)) * max(d) + kept(d) for d in layers)
        notes.append(f"galore: the trained layers' weights and gradients are full size; optimizer state at rank "
                     f"{rank}, and every galore.update_proj_gap steps one SVD per layer (brief extra memory)")
    n_magnitude = 0
    if methods.spec(config.method).dora:
        n_magnitude = dims["layers"] * sum(out for _, out in _adapted(dims, config.lora.target_modules).values())
    adapter_bytes = 2 if quantized else 4
    adapter = (n_adapter * adapter_bytes + n_magnitude * 4) * 2       # weights + gradients
    if galore_state:
        # GaLore: gradients only, the weights are the base's own. They are None at the backward pass's start (the
        # activations' peak), but measured (bench/RESULTS.md) they still count: the heap keeps the memory of the last
        # step's gradients resident after the Trainer frees them (malloc_trim releases such freed memory)
        adapter = n_adapter * act_bytes
        optimizer = galore_state * act_bytes           # states in the parameters' dtype
    elif config.training.optim == "adamw":
        optimizer = (n_adapter * adapter_bytes + n_magnitude * 4) * 2     # AdamW: two states of the parameter's dtype
    else:
        optimizer = _eight_bit_state(dims, config, n_adapter) + n_magnitude * 8   # magnitudes: under MIN_8BIT_SIZE
        if config.training.optim == "paged_adamw_8bit":
            notes.append("paged_adamw_8bit: the optimizer state may page out to CPU memory when the GPU runs short")

    tokens = t.batch_size * (t.max_length + prompt_tokens)
    masked = config.stage == Stage.SFT and _dense_packed_mask(t.batching, cuda, tokens, config.method)
    per_layer = saved_per_token_layer(dims, config, cuda, masked)
    if t.gradient_checkpointing:
        activations = tokens * (dims["layers"] * dims["hidden"] * act_bytes + per_layer)
    else:
        activations = tokens * dims["layers"] * per_layer
    activations += held_forward_bytes(activations, cuda)
    if masked:
        activations += tokens * tokens * 4 * dims["layers"]        # padding-free under sdpa: a float mask per layer
        notes.append(f"padding-free attention masks: {tokens * tokens * 4 * dims['layers'] / GIB:.2f} GiB "
                     "(training.batching: group_by_length needs none)")
    activations += tokens * dims["hidden"] * 4                       # the LM head's input
    tiles = LM_HEAD_TILES_GPU if cuda else LM_HEAD_TILES_CPU
    activations += tiles * min(tokens, LM_HEAD_TOKENS) * min(dims["vocab"], LM_HEAD_VOCAB) * 4
    overhead = GPU_OVERHEAD if cuda else CPU_OVERHEAD + mapped
    if mapped:
        notes.append(f"includes {mapped / GIB:.2f} GiB of the checkpoint that stays memory-mapped after "
                     f"{'quantizing' if quantized else 'the ' + methods.spec(config.method).label + ' init'} "
                     "(file cache the system can reclaim)")
    activations += saved_per_step(dims, config)
    if config.stage in (Stage.DPO, Stage.KTO):
        activations *= 2
        notes.append("preference stages run chosen and rejected (or reference) passes: activations doubled")
    if methods.spec(config.method).converts_at_save:
        notes.append(f"{methods.spec(config.method).label} decomposes each weight at start (brief extra memory)")
    if methods.spec(config.method).init_from_data is not None:
        notes.append(f"{methods.spec(config.method).label} first runs the base on lora.calibration_rows training rows "
                     "(inference only, less than a training step's memory)")
    return Estimate(weights=weights, adapter=adapter, optimizer=optimizer, activations=activations,
                    overhead=overhead, adapter_params=n_adapter + n_magnitude, notes=notes)


def held_forward_bytes(saved_activations: float, cuda: bool) -> float:
    """Freed forward memory the CPU heap keeps resident at the peak, in proportion to the activations the forward saves
    (HELD_FORWARD_SHARE_CPU); none on CUDA, whose caching allocator hands freed blocks to the next allocation."""
    return 0.0 if cuda else HELD_FORWARD_SHARE_CPU * saved_activations


def _eight_bit_state(dims: dict, config, n_adapter: int) -> float:
    """bitsandbytes 8-bit AdamW: two uint8 states + one fp32 absmax per block of 256 for each tensor of at least
    MIN_8BIT_SIZE elements; smaller tensors keep two fp32 states (bitsandbytes' min_8bit_size). LoRA's A / B sizes
    are known here; other methods' tensors are counted at the 8-bit rate."""
    if methods.spec(config.method).peft_type != "LORA":
        return n_adapter * EIGHT_BIT_BYTES
    r, total = config.lora.r, 0.0
    for d_in, d_out in _adapted(dims, config.lora.target_modules).values():
        for size in (r * d_in, r * d_out):
            total += size * (EIGHT_BIT_BYTES if size >= MIN_8BIT_SIZE else 8)
    return total * dims["layers"]


def _dense_packed_mask(batching: str, cuda: bool, tokens: int, method: str = "") -> bool:
    """Padding-free batches attend through a dense (tokens x tokens) mask unless FlashAttention-2 runs them."""
    import importlib.util

    from backend.config import resolve_batching
    if resolve_batching(batching, cuda, tokens, method) != "padding_free":
        return False
    return not (cuda and importlib.util.find_spec("flash_attn") is not None)


def devices() -> list[Device]:
    """Each CUDA GPU (via nvidia-smi, no torch import) or else this machine's RAM."""
    found = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.strip().splitlines():
                index, name, mib = [p.strip() for p in line.split(",")]
                found.append(Device(f"GPU {index}: {name}", float(mib) * 1024 * 1024))
        except (OSError, ValueError, subprocess.SubprocessError):
            found = []
    if not found:
        found.append(Device("CPU (system RAM)", _ram_bytes()))
    return found


def _ram_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def verdict(total: float, device: Device) -> str:
    if total > device.total_bytes:
        return "will not fit"
    if total > TIGHT_AT * device.total_bytes:
        return "tight"
    return "fits"
