"""Worker slots: one per GPU (one on a CPU-only machine). A job takes as many slots as it asks for GPUs."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

_lock = threading.Condition()
_all: list[str] = []
_free: list[str] = []


def configure(gpu_ids: list[str] | None = None) -> int:
    """Set the slots: the given GPU ids, else every visible GPU, else one CPU slot. Returns the count."""
    ids = visible_gpus() if gpu_ids is None else list(gpu_ids)
    with _lock:
        _all[:] = ids or ["cpu"]
        _free[:] = list(_all)
        _lock.notify_all()
    return len(_all)


def describe() -> str:
    """The configured slots, e.g. '0,1' or 'cpu'."""
    return ",".join(_all)


def visible_gpus() -> list[str]:
    try:
        import torch
        count = torch.cuda.device_count()
    except ImportError:
        count = 0
    declared = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return declared[:count] if declared else [str(i) for i in range(count)]


@contextmanager
def acquire(count: int):
    """Wait for the slots a job needs and yield their device ids (["cpu"] on a CPU-only machine, where
    data-parallel processes share the one CPU slot)."""
    if not _all:
        configure()
    with _lock:
        want = 1 if _all == ["cpu"] else min(max(count, 1), len(_all))
        while len(_free) < want:
            _lock.wait()
        taken = _free[:want]
        del _free[:want]
    try:
        yield taken
    finally:
        with _lock:
            _free.extend(taken)
            _lock.notify_all()
