"""Where a training step's RSS goes, phase by phase (the investigation behind the estimator's LM-head term).

    PYTHONPATH=. python bench/estimator_phases.py METHOD      # one method per fresh process; galore too

Bundled SmolLM2 in fp32, LoRA r=16 all-linear (dropout 0.05), TRL's fused LM head, 2 x 256 random tokens, three
plain steps (AdamW, or GaLore AdamW at rank 8), no Trainer. A thread samples VmRSS every 0.5 ms; the LM head's
autograd function is wrapped to mark its phases. One JSON line per step: RSS at the step's start (MiB), the bytes
autograd saved (saved_mib, parameters excluded), the gradients after backward, and each phase's peak RSS minus the
step's start. Step 2 calls malloc_trim(0) just before the LM head ("at-head-trimmed"): what it gives back is memory
the program freed but the heap kept resident.
"""
import ctypes
import json
import sys
import threading
import time
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from trl.kernels import chunked_logprob
from trl.trainer.utils import add_fused_lm_head

from backend.config import JobConfig
from backend.models import methods

method = sys.argv[1]
libc = ctypes.CDLL("libc.so.6")


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


phase, peaks, trim_at_head = ["idle"], {}, [False]


def sample_rss():
    while True:
        rss, current = rss_mib(), phase[0]
        if rss > peaks.get(current, 0):
            peaks[current] = rss
        time.sleep(0.0005)


threading.Thread(target=sample_rss, daemon=True).start()
head = chunked_logprob.ChunkedLogProbFunction
head_forward, head_backward = head.forward, head.backward


def marked_forward(ctx, *args, **kwargs):
    phase[0] = "before-head"
    time.sleep(0.02)
    peaks["at-head"] = rss_mib()
    if trim_at_head[0]:
        libc.malloc_trim(0)
        time.sleep(0.02)
        peaks["at-head-trimmed"] = rss_mib()
    phase[0] = "head-fwd"
    out = head_forward(ctx, *args, **kwargs)
    phase[0] = "after-head-fwd"
    return out


def marked_backward(ctx, *args):
    phase[0] = "head-bwd"
    out = head_backward(ctx, *args)
    phase[0] = "layers-bwd"
    return out


head.forward, head.backward = staticmethod(marked_forward), staticmethod(marked_backward)

job = JobConfig.from_dict({"method": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                                      "target_modules": "all-linear"}})
base = AutoModelForCausalLM.from_pretrained(Path.home() / ".lorastudio/models/smollm2-135m-instruct",
                                            dtype=torch.float32)
add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))   # as TRL's SFTTrainer adds it
if method == "galore":
    from galore_torch import GaLoreAdamW

    from backend.stages import galore
    model = galore.prepare(base, job)
    optimizer = GaLoreAdamW([{"params": [p for p in model.parameters() if p.requires_grad], "rank": 8,
                              "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}], lr=1e-4)
else:
    model = get_peft_model(base, methods.build(job).peft_config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
model.train()
ids = torch.randint(10, 40000, (2, 256))
held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
for step in range(3):
    peaks.clear()
    saved, trim_at_head[0] = {}, step == 2

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in held:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    time.sleep(0.05)
    start = rss_mib()
    phase[0] = "layers-fwd"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(input_ids=ids, labels=ids, fused_lm_head=True)
    phase[0] = "bwd-start"
    out.loss.backward()
    gradients = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None) / 2**20
    phase[0] = "optim"
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    phase[0] = "idle"
    time.sleep(0.05)
    print(json.dumps({"method": method, "step": step, "start": round(start),
                      "saved_mib": round(sum(saved.values()) / 2**20), "grads_mib": round(gradients),
                      **{name: round(rss - start) for name, rss in peaks.items() if name != "idle"}}), flush=True)
