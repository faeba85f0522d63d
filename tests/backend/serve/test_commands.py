"""The same adapters as vLLM and llama.cpp server command lines."""
from __future__ import annotations

import json
import shlex

from backend import workspace as studio_workspace
from backend.serve import commands


def _adapter(folder, r, peft_type="LORA"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "r": r}))
    return folder


def test_vllm_gets_every_adapter_and_the_smallest_max_rank_that_holds_them(tmp_path):
    line = commands.vllm(tmp_path / "base", {"job-a": _adapter(tmp_path / "a", 8),
                                             "job-b": _adapter(tmp_path / "b", 12)})
    parts = shlex.split(line.command)
    assert parts[:4] == ["vllm", "serve", str(tmp_path / "base"), "--enable-lora"]
    assert parts[parts.index("--max-lora-rank") + 1] == "16" and parts[parts.index("--max-loras") + 1] == "2"
    modules = parts[parts.index("--lora-modules") + 1:]
    assert modules == [f"job-a={tmp_path / 'a'}", f"job-b={tmp_path / 'b'}"]
    assert "NVIDIA" in line.why or "runs on this machine" in line.why
    ia3 = commands.vllm(tmp_path / "base", {"job-c": _adapter(tmp_path / "c", 0, "IA3")})
    assert ia3.command is None and "LoRA adapters only" in ia3.why
    assert commands.vllm(tmp_path / "base", {}).command is None


def test_llama_server_needs_lora_gguf_exports_of_one_base(workspace):
    """Only the file names matter to the command line: the files here are placeholders, not GGUFs."""
    exports = studio_workspace.exports_dir()

    def export(job_id, base):
        folder = exports / job_id / f"{job_id}-lora-gguf"
        folder.mkdir(parents=True)
        (folder / f"{job_id}-lora-f16.gguf").write_bytes(b"GGUF")
        (folder / base).write_bytes(b"GGUF")

    missing = commands.llama_server(["job-a"])
    assert missing.command is None and "export job-a as \"LoRA GGUF\" first" in missing.why
    export("job-a", "tiny-f16.gguf")
    export("job-b", "tiny-f16.gguf")
    line = commands.llama_server(["job-a", "job-b"])
    parts = shlex.split(line.command)
    assert parts[:3] == ["llama-server", "-m", str(exports / "job-a" / "job-a-lora-gguf" / "tiny-f16.gguf")]
    assert [parts[i + 1] for i, p in enumerate(parts) if p == "--lora"] == [
        str(exports / j / f"{j}-lora-gguf" / f"{j}-lora-f16.gguf") for j in ("job-a", "job-b")]
    assert "--lora-init-without-apply" in parts and "1 = job-b" in line.why
    export("job-c", "other-f16.gguf")
    assert "different base models" in commands.llama_server(["job-a", "job-c"]).why
