"""Test-only fault injection, installed as a trainer callback through backend.stages.harness.register_callback.

In this process: `with faults("oom_if_batch_over:2"): ...`. In a worker or app subprocess: start it with
`fault_env("crash_at_step:2")` in its environment; this folder's sitecustomize.py then installs the faults in
every Python process started with that environment (the worker, the training process, torchrun's ranks).

Faults: nan_at_step:N (poison the adapter so step N's loss is NaN), crash_at_step:N (SIGKILL this process at
the end of step N), slow_steps:S (sleep S seconds each step), oom_if_batch_over:B (raise out-of-memory while
the batch size is above B), hang_at_step:N (sleep for an hour at the end of step N, once per run), and
kill_in_save_<point>:N (SIGKILL inside the save of checkpoint-N, once per run) where point is one of
SAVE_POINTS: half-way through writing a file of the checkpoint, or just before its COMPLETE marker;
kill_group:1 (those kills are left to the test, to take the whole worker group: the process writes
$LORASTUDIO_HOME/KILL_GROUP_NOW and waits; from inside a PID namespace nothing can SIGKILL its PID 1), fill_disk_at_step:N (at the
end of step N, once, fill the workspace's disk with $LORASTUDIO_HOME/ballast, leaving 64 KB free);
kill_in_export_weights:1 / kill_in_export_zip:1 (an export process cuts its merged weights off half-way, or dies
after the first chunk of its zip).
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

ENV = "LORASTUDIO_TEST_FAULTS"
PLUGIN_DIR = Path(__file__).resolve().parent


# where inside a checkpoint save a kill lands: the file cut off half-way (or "marker": all written, unmarked)
SAVE_POINTS = {"weights": "adapter_model.safetensors", "optimizer": "optimizer.pt", "rng": "rng_state.pth",
               "state": "trainer_state.json", "marker": "COMPLETE"}


def parse(text: str) -> dict:
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        faults[name] = float(value or 0)
    return faults


def fault_callback(faults: dict):
    from transformers import TrainerCallback

    class FaultCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if args.per_device_train_batch_size > faults.get("oom_if_batch_over", 1e9):
                import torch
                raise torch.OutOfMemoryError(f"out of memory (injected at batch size "
                                             f"{args.per_device_train_batch_size})")
            if "slow_steps" in faults:
                time.sleep(faults["slow_steps"])
            if faults.get("crash_at_step") == step:
                os.kill(os.getpid(), signal.SIGKILL)
            if faults.get("fill_disk_at_step") == step and _first_time(Path(args.output_dir).parent, "fill"):
                _fill_disk(Path(os.environ["LORASTUDIO_HOME"]) / "ballast", keep_free=64 << 10)
            if faults.get("hang_at_step") == step and _first_time(Path(args.output_dir).parent, f"hang@{step}"):
                time.sleep(3600)
            if faults.get("nan_at_step") == step + 1 and model is not None:
                import torch
                with torch.no_grad():  # poison the adapter so the next step's loss is NaN
                    for parameter in model.parameters():
                        if parameter.requires_grad:
                            parameter.fill_(float("nan"))

    return FaultCallback()


def _first_time(run_dir: Path, name: str) -> bool:
    """True the first time `name` fires in this run (a marker file in the run folder), so a resumed attempt
    gets past the fault."""
    marker = Path(run_dir) / f".fault-{name}"
    if marker.exists():
        return False
    marker.write_text("fired")
    return True


def _fill_disk(path: Path, keep_free: int) -> None:
    import shutil
    left = shutil.disk_usage(path.parent).free - keep_free
    with open(path, "wb") as handle:
        while left > 0:
            chunk = min(left, 1 << 20)
            handle.write(b"\0" * chunk)
            left -= chunk


_kill_group = False
KILL_GROUP_MARKER = "KILL_GROUP_NOW"


def _die() -> None:
    if _kill_group:  # the test sees the marker and kills the worker's group from outside
        (Path(os.environ["LORASTUDIO_HOME"]) / KILL_GROUP_MARKER).write_text(str(os.getpid()))
        time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)


def _cut_off(path: Path, data: bytes) -> None:
    """Write half of `data` to `path`, flush it to disk, and die: a save killed mid-write."""
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    _die()


def _save_target(path, faults: dict) -> bool:
    """Is `path` (…/checkpoint-N/<file>) the file a kill_in_save fault aims at, the first time?"""
    path = Path(path)
    if not path.parent.name.startswith("checkpoint-"):
        return False
    step = int(path.parent.name.split("-")[-1])
    for point, file_name in SAVE_POINTS.items():
        if faults.get(f"kill_in_save_{point}") == step and path.name == file_name:
            return _first_time(path.parent.parent.parent, f"{point}@{step}")
    return False


_patched = False


def patch_checkpoint_writes(faults: dict) -> None:
    """Wrap the writers of a checkpoint's files (torch.save, safetensors in peft, the trainer state, the COMPLETE
    marker) so that a kill_in_save fault cuts the aimed file off half-way and kills this process."""
    global _patched, _kill_group
    if _patched or not any(name.startswith("kill_in_save_") for name in faults):
        return
    _patched, _kill_group = True, bool(faults.get("kill_group"))
    import io

    import peft.peft_model
    import safetensors.torch
    import torch
    from transformers import trainer_callback

    from backend.jobs import callbacks

    torch_save, safe_save, save_state = torch.save, peft.peft_model.safe_save_file, trainer_callback.TrainerState.save_to_json
    mark = callbacks.CheckpointMarkerCallback.on_save

    def faulty_torch_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and _save_target(f, faults):
            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            _cut_off(Path(f), buffer.getvalue())
        return torch_save(obj, f, *args, **kwargs)

    def faulty_safe_save(tensors, filename, metadata=None):
        if _save_target(filename, faults):
            _cut_off(Path(filename), safetensors.torch.save(tensors, metadata=metadata))
        return safe_save(tensors, filename, metadata=metadata)

    def faulty_save_state(self, json_path):
        if _save_target(json_path, faults):
            import dataclasses
            import json
            _cut_off(Path(json_path), json.dumps(dataclasses.asdict(self), indent=2).encode())
        return save_state(self, json_path)

    def faulty_mark(self, args, state, control, **kwargs):
        if _save_target(Path(args.output_dir) / f"checkpoint-{state.global_step}" / "COMPLETE", faults):
            _die()
        return mark(self, args, state, control, **kwargs)

    torch.save = faulty_torch_save
    peft.peft_model.safe_save_file = faulty_safe_save
    trainer_callback.TrainerState.save_to_json = faulty_save_state
    callbacks.CheckpointMarkerCallback.on_save = faulty_mark


def patch_export_writes(faults: dict) -> None:
    """kill_in_export_*: the export in this process dies half-way through its weights or its zip."""
    from backend import export

    if faults.get("kill_in_export_weights"):
        import safetensors.torch
        from transformers import modeling_utils

        def faulty_save(tensors, filename, metadata=None):
            if Path(filename).parent.name.endswith(".partial"):
                _cut_off(Path(filename), safetensors.torch.save(tensors, metadata=metadata))
            return safetensors.torch.save_file(tensors, filename, metadata=metadata)

        modeling_utils.safe_save_file = faulty_save
    if faults.get("kill_in_export_zip"):
        zip_folder = export.zip_folder

        def faulty_zip(folder, zip_path, progress=None):
            def progress_then_die(fraction, text):
                if fraction < 1:
                    _die()  # the first chunk is in the .partial zip, the rest never comes
            return zip_folder(folder, zip_path, progress_then_die)

        export.zip_folder = faulty_zip


def install(text: str):
    """Register the faults for every job trained in this process; returns the factory (to unregister)."""
    from backend.stages import harness

    faults = parse(text)
    if any(name.startswith("kill_in_export_") for name in faults):
        patch_export_writes(faults)

    def factory(config):
        patch_checkpoint_writes(faults)
        return fault_callback(faults)

    return harness.register_callback(factory)


@contextmanager
def faults(text: str):
    """The faults for the jobs trained in this process while the block runs."""
    from backend.stages import harness

    factory = install(text)
    try:
        yield
    finally:
        harness.unregister_callback(factory)


def fault_env(text: str) -> dict:
    """Environment for a subprocess whose training jobs get these faults."""
    path = os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))
    return {ENV: text, "PYTHONPATH": path}
