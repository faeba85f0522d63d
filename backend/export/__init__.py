"""One-click export of a job: the merged model or the adapter alone, verified, zipped, listed for download.

merged   base in full precision (a QLoRA base is de-quantised first: never a merge into 4-bit weights) + the
         adapter merged in place, cast to the chosen dtype, saved as safetensors (sharded when large) with the
         tokenizer and chat template, generation config, README.md (model card with the lineage and the merge
         verification) and an Ollama Modelfile
adapter  the PEFT folder + its training card
gguf     the merged model (float32) written as one GGUF file for llama.cpp / Ollama / LM Studio: F16 or Q8_0 by
         backend/export/gguf.py; Q4_K_M / Q5_K_M / Q6_K quantised from that F16 file by llama.cpp's own quantiser.
         Checked by llama.cpp itself against the merged model (tokenizer, embedded chat template, answers:
         backend/export/llamacpp_check.py; transformers' GGUF loader where llama.cpp is not built) before it is
         offered (a failed check fails the export: nothing is offered), with a Modelfile pointing at it
lora-gguf the adapter as a llama.cpp LoRA GGUF (llama.cpp's converter) + the base model as an F16 GGUF + a
         Modelfile with FROM and ADAPTER, checked in llama.cpp against the unmerged adapter (lora_gguf.py)

Before saving, the merged weights are checked against the unmerged adapter on a few prompts (largest logit
difference, greedy answers). Everything is written under exports/<job_id>/ into a hidden `.partial` name and
renamed when complete, so a killed or failed export never leaves a file that is offered for download. One
export runs at a time (an OS file lock, released even when the process is killed).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from backend import workspace
from backend.models import adapters, methods
from backend.jobs.card import USE_HEADING, library_versions, read_run_facts, usage_python
from backend.export.modelfile import modelfile_text

log = logging.getLogger("lorastudio")

KINDS = ("merged", "adapter", "gguf", "lora-gguf")
GGUF_QTYPES = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16")
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")   # only llama.cpp's quantiser writes them (gguf 0.19 cannot)
VERIFY_PROMPTS = ("Who are you?", "What is the capital of Italy?", "Write one sentence about the sea.")
VERIFY_NEW_TOKENS = 24
# Largest |logit(adapter) - logit(merged)| accepted, by the dtype the merged model is saved in. float32 only
# sees summation-order rounding (measured 1e-4 on the bundled model after the quickstart); half types round
# every weight: measured 0.17 (float16) and 1.27 (bfloat16, 8-bit mantissa) with all greedy answers equal.
TOLERANCE = {"float32": 1e-3, "bfloat16": 2.0, "float16": 0.5}
CHUNK = 8 * 1024 * 1024
SHARD_SIZE = "2GB"
LOCK_NAME = ".export.lock"


class ExportError(ValueError):
    """One sentence: what is wrong and what to do."""


@dataclass
class MergeCheck:
    """The merged model against the unmerged adapter, on the same token sequences."""
    dtype: str
    prompts: list[str]
    max_logit_diff: float
    answers_match: list[bool]
    adapter_answers: list[str]
    merged_answers: list[str]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(self.answers_match) and self.max_logit_diff <= self.tolerance

    def summary(self) -> str:
        matched = f"{sum(self.answers_match)}/{len(self.answers_match)} greedy answers equal"
        verdict = "verified" if self.ok else "WARNING: above tolerance"
        return (f"{verdict}: max |logit diff| {self.max_logit_diff:.2e} ({self.dtype}, tolerance "
                f"{self.tolerance:g}), {matched}")

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class ExportResult:
    job_id: str
    kind: str
    folder: Path
    zip_path: Path
    seconds: float
    check: MergeCheck | None = None
    notes: list[str] = field(default_factory=list)
    gguf: dict | None = None        # the GGUF verification (kind "gguf")


@dataclass
class ExportFile:
    path: Path
    job_id: str
    size: int
    created: float

    @property
    def name(self) -> str:
        return self.path.name


# ---------------------------------------------------------------- verification

@dataclass
class Probe:
    """Per prompt: the token sequence (prompt + greedy answer), logits over it, and the answer tokens."""
    prompt_lengths: list[int]
    sequences: list
    logits: list
    answer_ids: list
    answers: list[str]


def probe(model, tokenizer, prompts, max_new_tokens: int = VERIFY_NEW_TOKENS) -> Probe:
    """Greedy answers of `model` to all prompts in one batched generate (left padding), then its logits over
    each prompt + answer, one unpadded forward each (see follow)."""
    import torch

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    stops = _eos_ids(model, tokenizer)
    lengths, sequences = [], []
    for row, mask in zip(out, batch["attention_mask"]):
        pads, length = int((mask == 0).sum()), int(mask.sum())
        sequence = row[pads:].tolist()
        answer = sequence[length:]
        end = next((i + 1 for i, token in enumerate(answer) if token in stops), len(answer))
        lengths.append(length)
        sequences.append(torch.tensor([sequence[:length + end]]))
    return follow(model, tokenizer, lengths, sequences)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def follow(model, tokenizer, prompt_lengths, sequences) -> Probe:
    """Logits of `model` on given sequences (one forward each). Its greedy answer is read off them by
    teacher forcing: the argmax at every answer position. That equals free greedy generation exactly when
    each argmax is the given token, so two models' greedy answers can be compared without generating twice."""
    import torch

    logits, answer_ids = [], []
    for length, seq in zip(prompt_lengths, sequences):
        with torch.no_grad():
            out = model(input_ids=seq.to(model.device)).logits[0].float().cpu()
        logits.append(out)
        answer_ids.append(out[length - 1:-1].argmax(-1))
    answers = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answer_ids]
    return Probe(list(prompt_lengths), sequences, logits, answer_ids, answers)


def merge_check(dtype: str, prompts, reference: Probe, merged: Probe) -> MergeCheck:
    """reference: the unmerged adapter's probe(); merged: follow() of the merged model on its sequences. Both
    sides' greedy tokens are read off unpadded forwards of identical sequences, so batching cannot differ."""
    diff = max(float((a - b).abs().max()) for a, b in zip(reference.logits, merged.logits))
    return MergeCheck(dtype=dtype, prompts=list(prompts), max_logit_diff=diff,
                      answers_match=[torch_equal(a, b) for a, b in zip(reference.answer_ids, merged.answer_ids)],
                      adapter_answers=reference.answers, merged_answers=merged.answers, tolerance=TOLERANCE[dtype])


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


# ---------------------------------------------------------------- export

def export_job(job_id: str, kind: str = "merged", dtype: str = "auto", progress=None,
               prompts=VERIFY_PROMPTS, qtype: str = "f16") -> ExportResult:
    """Export a job's merged model, adapter or GGUF into exports/<job_id>/ and zip it. progress(fraction, text)."""
    progress = progress or (lambda fraction, text: None)
    if kind not in KINDS:
        raise ExportError(f"export kind '{kind}' is not one of {', '.join(KINDS)}")
    if kind == "gguf" and qtype not in GGUF_QTYPES:
        raise ExportError(f"GGUF type '{qtype}' is not one of {', '.join(GGUF_QTYPES)}")
    if kind == "gguf" and qtype in K_QUANTS:
        from backend.export import llamacpp
        if not llamacpp.available():
            raise ExportError(f"GGUF {qtype.upper()} needs llama.cpp's quantiser: {llamacpp.LlamaCppMissing()}")
    started = time.monotonic()
    with export_lock(job_id):
        source = adapters.adapter_source(job_id)
        refusal = not_mergeable(source, kind)
        if refusal:
            raise ExportError(refusal)
        dtype = resolve_dtype(source, dtype) if kind == "merged" else None
        out_dir = workspace.exports_dir() / source.job_id
        out_dir.mkdir(parents=True, exist_ok=True)
        name = {"merged": f"{source.job_id}-merged-{dtype}", "adapter": f"{source.job_id}-adapter",
                "gguf": f"{source.job_id}-{qtype}-gguf", "lora-gguf": f"{source.job_id}-lora-gguf"}[kind]
        staging = out_dir / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        check, notes, gguf = None, [], None
        if not source.final:
            notes.append(f"exported from {source.label}: the job had not finished")
        try:
            if kind == "merged":
                check = _write_merged(source, dtype, staging, prompts, progress)
                if not check.ok:
                    notes.append("merge verification above tolerance: " + check.summary())
            elif kind == "gguf":
                check, gguf = _write_gguf(source, qtype, staging, prompts, progress)
            elif kind == "lora-gguf":
                gguf = _write_lora_gguf(source, staging, prompts, progress)
            else:
                progress(0.1, "copying the adapter")
                _write_adapter(source, staging)
            folder = out_dir / name
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
            zip_path = zip_folder(folder, out_dir / f"{name}.zip",
                                  lambda f, text: progress(0.7 + 0.3 * f, text))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    progress(1.0, "done")
    result = ExportResult(source.job_id, kind, folder, zip_path, round(time.monotonic() - started, 2), check, notes,
                          gguf)
    log.info("exported %s %s to %s in %.1f s", job_id, kind, zip_path, result.seconds)
    return result


def not_mergeable(source, kind: str) -> str:
    """One sentence when the job's method cannot give this kind (every kind but the adapter needs a merge or a
    LoRA), else ""."""
    method = methods.spec(source.config.method)
    if method.mergeable or kind == "adapter":
        return ""
    return (f"job {source.job_id} cannot be exported as {kind} ({method.not_mergeable_reason}); "
            "export the adapter instead")


def offered_kinds(job_id: str) -> tuple[tuple[str, ...], str]:
    """The export kinds a job's method allows, and the one sentence saying why some are missing ("" if none)."""
    try:
        source = adapters.adapter_source(job_id)
    except adapters.AdapterError:
        return KINDS, ""          # the export itself says what is missing
    method = methods.spec(source.config.method)
    return (KINDS, "") if method.mergeable else (("adapter",), f"adapter only: {method.not_mergeable_reason}")


def resolve_dtype(source, dtype: str) -> str:
    """'auto' = the base model's own dtype when it is a float type we write, else bfloat16."""
    if dtype != "auto":
        adapters.torch_dtype(dtype)   # raises the clear message for an unknown name
        return dtype
    from backend import models
    config_path = Path(models.resolve(source.config.model).path) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        config = {}
    own = str(config.get("dtype") or config.get("torch_dtype") or "")
    return own if own in adapters.DTYPES else "bfloat16"


def _write_merged(source, dtype: str, staging: Path, prompts, progress) -> MergeCheck:
    check, tokenizer = _merge_to_folder(source, dtype, staging, prompts, progress)
    (staging / "Modelfile").write_text(modelfile_text(tokenizer, "FROM ."), encoding="utf-8")
    _write_card(source, staging, "merged", dtype, check)
    return check


def _merge_to_folder(source, dtype: str, folder: Path, prompts, progress, span: float = 0.7):
    """Load, verify, merge and save_pretrained into `folder`; progress runs from 0 to `span`.
    Returns (MergeCheck, the tokenizer saved there)."""
    progress(0.02 * span, "loading the base model in full precision" + (" (de-quantising the 4-bit base)"
                                                                         if source.four_bit else ""))
    model, merge = adapters.load_merged(source, dtype)
    tokenizer = adapters.load_tokenizer(source)
    progress(0.25 * span, "verifying: adapter answers")
    reference = probe(model, tokenizer, prompts)
    progress(0.5 * span, "merging the adapter into the weights")
    merged = merge()
    progress(0.6 * span, "verifying: merged answers")
    check = merge_check(dtype, prompts, reference, follow(merged, tokenizer, reference.prompt_lengths,
                                                          reference.sequences))
    log.info("merge check: %s", check.summary())
    progress(0.7 * span, f"saving safetensors ({dtype})")
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.save_pretrained(folder, safe_serialization=True, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(folder)
    del model, merged
    return check, tokenizer


WRITER_LLAMACPP = "llama.cpp's convert_hf_to_gguf.py"
WRITER_STUDIO = "LoRA Studio's writer (gguf package)"


def gguf_support_problem(model_dir: Path) -> str | None:
    """None when a GGUF of this model can be written here (by llama.cpp's converter or the studio's writer),
    else one sentence naming the architecture or vocabulary."""
    from backend.export import gguf as gguf_export
    from backend.export import llamacpp, llamacpp_convert

    problem = None
    if llamacpp.available() and llamacpp_convert.converter_available():
        problem = llamacpp_convert.supported(model_dir)
        if problem is None:
            return None
    try:
        gguf_export.check_supported(model_dir)
    except gguf_export.GgufError as error:
        return problem or str(error)
    return None


def write_model_gguf(model_dir: Path, out_path: Path, qtype: str, progress) -> str:
    """An F16 / Q8_0 GGUF of a model folder, by llama.cpp's own converter where it is set up and takes the model
    (it knows every family llama.cpp runs), else by the studio's writer; returns which one wrote it."""
    from backend.export import gguf as gguf_export
    from backend.export import llamacpp, llamacpp_convert

    if llamacpp.available() and llamacpp_convert.converter_available() and \
            llamacpp_convert.supported(model_dir) is None:
        progress(0.0, "llama.cpp's converter")
        try:
            llamacpp_convert.convert_model(model_dir, out_path, qtype)
        except llamacpp.LlamaCppError as error:
            raise ExportError(f"GGUF {qtype.upper()} export failed: {error}") from None
        progress(1.0, "llama.cpp's converter")
        return WRITER_LLAMACPP
    gguf_export.write_gguf(model_dir, out_path, qtype, progress=progress)
    return WRITER_STUDIO


def gguf_qtypes_here() -> tuple[str, ...]:
    """The GGUF types this installation can write: the k-quants only where llama.cpp is built."""
    from backend.export import llamacpp
    return GGUF_QTYPES if llamacpp.available() else tuple(q for q in GGUF_QTYPES if q not in K_QUANTS)


def _write_gguf(source, qtype: str, staging: Path, prompts, progress) -> tuple[MergeCheck, dict]:
    """Merged float32 folder (temporary) -> GGUF (k-quants: F16 first, then llama.cpp's quantiser) -> checked by
    llama.cpp against the merged model (transformers' loader where llama.cpp is missing); a failed check raises."""
    from backend import models
    from backend.export import gguf as gguf_export
    from backend.export import llamacpp, llamacpp_check

    problem = gguf_support_problem(Path(models.resolve(source.config.model).path))   # before any work
    if problem:
        raise ExportError(problem)
    merged_dir = staging.with_name(staging.name + ".merged")
    shutil.rmtree(merged_dir, ignore_errors=True)
    name = qtype.upper()
    try:
        check, tokenizer = _merge_to_folder(source, "float32", merged_dir, prompts, progress, span=0.35)
        staging.mkdir(parents=True)
        gguf_path = staging / f"{source.job_id}-{qtype}.gguf"
        if qtype in K_QUANTS:
            f16_path = merged_dir / "model-f16.gguf"   # removed with the merged folder
            writer = write_model_gguf(merged_dir, f16_path, "f16",
                                      lambda f, text: progress(0.35 + 0.1 * f, f"writing GGUF F16: {text}"))
            progress(0.45, f"quantising to {name} with llama.cpp")
            llamacpp.quantize(f16_path, gguf_path, qtype)
        else:
            writer = write_model_gguf(merged_dir, gguf_path, qtype,
                                      lambda f, text: progress(0.35 + 0.15 * f, f"writing GGUF {name}: {text}"))
        if llamacpp.available():
            progress(0.5, f"verifying the {name} file in llama.cpp: tokenizer, chat template, answers")
            verification = llamacpp_check.verify(gguf_path, merged_dir, list(prompts))
        else:
            progress(0.5, f"verifying the {name} file: loading it back through transformers (llama.cpp is not "
                          "built)")
            verification = gguf_export.verify_gguf(gguf_path, merged_dir, list(prompts))
        verification["writer"] = writer
        if not verification["ok"]:
            raise ExportError(f"GGUF {name} export failed verification: {verification['reason']}; nothing is "
                              "offered for download")
    except llamacpp.LlamaCppError as error:
        raise ExportError(f"GGUF {name} export failed: {error}; nothing is offered for download") from None
    finally:
        shutil.rmtree(merged_dir, ignore_errors=True)
    (staging / "Modelfile").write_text(modelfile_text(tokenizer, f"FROM ./{gguf_path.name}"), encoding="utf-8")
    _write_card(source, staging, "gguf", qtype, check, verification)
    return check, verification


def _write_lora_gguf(source, staging: Path, prompts, progress) -> dict:
    from backend.export import lora_gguf

    verification, tokenizer, base_file = lora_gguf.write(source, staging, prompts, progress)
    verification["base_file"] = base_file
    adapter_file = f"{source.job_id}-lora-f16.gguf"
    (staging / "Modelfile").write_text(modelfile_text(tokenizer, f"FROM ./{base_file}\nADAPTER ./{adapter_file}"),
                                       encoding="utf-8")
    _write_card(source, staging, "lora-gguf", "f16", None, verification)
    return verification


def _write_adapter(source, staging: Path) -> None:
    staging.mkdir(parents=True)
    for item in source.path.iterdir():
        if item.is_file() and not item.name.endswith((".pt", ".pth", ".bin", ".pkl")):  # safetensors only
            shutil.copy2(item, staging / item.name)
    _write_card(source, staging, "adapter", None, None)


def _write_card(source, folder: Path, kind: str, dtype: str | None, check: MergeCheck | None,
                gguf: dict | None = None) -> None:
    """README.md: what this export is, its verification, how to use it (a Python snippet that tests run on the
    real files, plus the llama.cpp / Ollama commands for GGUF), then the facts; and training-card.md, the run's
    card without its own load instructions (they are for the run folder's adapter, not for this export)."""
    from backend import models
    from backend.export import gguf as gguf_export

    run_dir = workspace.run_dir(source.job_id)
    training = read_run_facts(run_dir)
    if (run_dir / "card.md").is_file():
        (folder / "training-card.md").write_text(
            training_card_for_export((run_dir / "card.md").read_text(encoding="utf-8"), kind), encoding="utf-8")
    lineage = training.get("lineage") or [source.config.model, f"{source.config.stage} {source.job_id}"]
    facts = {"job_id": source.job_id, "export": kind, "dtype": dtype, "adapter": source.label,
             "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "base_model": training.get("base_model"),
             "method": str(source.config.method), "stage": str(source.config.stage), "lineage": lineage,
             "merge_verification": check.as_dict() if check else None, "libraries": library_versions()}
    if gguf:
        facts["gguf_verification"] = {k: gguf.get(k) for k in (
            "checker", "qtype", "ok", "reason", "tokens_match", "template_match", "prompts", "answers_match",
            "gguf_answers", "max_logit_diff", "tolerance", "tie_margin", "positions", "near_ties", "disagreements",
            "top1_agreement", "min_top1",
            "lora", "base_file", "writer")
            if k in gguf}
    verified = f"\n\nMerge verification: {check.summary()}." if check else ""
    if kind == "gguf":
        gguf_file = f"{source.job_id}-{dtype}.gguf"
        how = ("Ollama (the Modelfile carries the chat template and stop tokens), llama.cpp or LM Studio, from this "
               f"folder:\n\n```sh\n{gguf_commands(gguf_file)}```\n\nOr in Python with transformers, which "
               "de-quantises the file to float:\n\n" + usage_python("gguf", ".", gguf_file=gguf_file))
        if gguf:
            by = ("loaded by llama.cpp itself" if gguf.get("checker") == "llama.cpp"
                  else "the file loaded back through transformers")
            by += f"; written by {gguf['writer']}" if gguf.get("writer") else ""
            verified += f"\n\nGGUF verification ({by}): {gguf_export.describe(gguf)}"
    elif kind == "lora-gguf":
        adapter_file, base_file = f"{source.job_id}-lora-f16.gguf", (gguf or {}).get("base_file", "BASE.gguf")
        how = ("The adapter as a llama.cpp LoRA GGUF next to its base model as GGUF. Ollama (the Modelfile has FROM "
               "the base and ADAPTER this adapter) or llama.cpp, from this folder:\n\n```sh\nollama create "
               f"my-model -f Modelfile\nollama run my-model\nllama-cli -m {base_file} --lora {adapter_file} -cnv\n```"
               "\n\nOther adapters trained on the same base model load on the same base file. In Python with "
               "llama-cpp-python:\n\n" + lora_gguf_python(base_file, adapter_file))
        if gguf:
            verified += (f"\n\nLoRA GGUF verification (base + adapter loaded by llama.cpp itself, against the "
                         f"unmerged adapter): {gguf_export.describe(gguf)}")
    elif kind == "merged":
        how = ("The adapter is merged into the weights: plain transformers loads this folder, no peft and no LoRA "
               "Studio code (run from this folder):\n\n" + usage_python("merged", ".")
               + "\nOllama: `ollama create my-model -f Modelfile`, then `ollama run my-model`.\n")
    else:
        base = (training.get("base_model") or {}).get("path") or models.resolve(source.config.model).path
        how = (f"Load it with peft on its base model **{source.config.model}** (run from this folder; the base "
               "path is where it lies on the machine that trained it):\n\n" + usage_python("adapter", ".", base))
    from backend.evaluate.report import card_section, read_report
    quality = card_section(read_report(source.job_id), source.label)
    text = (f"# {source.job_id} ({kind})\n\n{source.config.method.upper()} {source.config.stage.upper()} "
            f"fine-tune of **{source.config.model}** made with LoRA Studio.\n\nLineage: {' -> '.join(lineage)}."
            f"{verified}\n\n{quality}## Use\n\n{how}\n## Facts\n\n```yaml\n{yaml.safe_dump(facts, sort_keys=False)}```\n")
    (folder / "README.md").write_text(text, encoding="utf-8")


def lora_gguf_python(base_file: str, adapter_file: str) -> str:
    """The card's Python snippet for a LoRA GGUF export (a test runs it on the real files)."""
    return ("```python\nfrom llama_cpp import Llama\n\n"
            f"llm = Llama(model_path={base_file!r}, lora_path={adapter_file!r}, n_ctx=2048, verbose=False)\n"
            "reply = llm.create_chat_completion([{\"role\": \"user\", \"content\": \"Who are you?\"}], max_tokens=64)\n"
            "print(reply[\"choices\"][0][\"message\"][\"content\"])\n```\n")


def gguf_commands(gguf_file: str) -> str:
    """The shell lines a GGUF card gives (tests check their syntax and that they name the files present)."""
    return (f"ollama create my-model -f Modelfile\nollama run my-model\n"
            f"llama-cli -m {gguf_file} -cnv\n")


def training_card_for_export(card: str, kind: str) -> str:
    """The run's card.md as copied into an export: its "## Use" section (the run folder's adapter/ with peft)
    replaced by a pointer to README.md, which says how to load this export."""
    note = (f"> This is the card of the training run. This folder is the **{kind}** export: README.md says how "
            "to load it" + (" (the adapter is merged in: plain transformers, no peft)" if kind == "merged" else "")
            + ".\n\n")
    start = card.find(USE_HEADING + "\n")
    if start >= 0:
        end = card.find("\n## ", start + len(USE_HEADING))
        card = card[:start] + card[end + 1:] if end >= 0 else card[:start]
    else:   # cards written before the Use section had one load sentence
        card = re.sub(r"Load it with `peft\.PeftModel\.from_pretrained\(base_model, this_folder\)`[^\n]*\n\n", "",
                      card)
    return note + card


# ---------------------------------------------------------------- zip, lock, listing

def zip_folder(folder: Path, zip_path: Path, progress=None) -> Path:
    """Stream a folder into a zip in chunks (weights stored, text deflated); renamed into place when done."""
    progress = progress or (lambda fraction, text: None)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files) or 1
    partial = zip_path.with_name(f".{zip_path.name}.partial")
    done = 0
    try:
        with zipfile.ZipFile(partial, "w", allowZip64=True) as archive:
            for path in files:
                arcname = f"{folder.name}/{path.relative_to(folder).as_posix()}"
                binary = path.suffix in (".safetensors", ".gguf")
                info = zipfile.ZipInfo.from_file(path, arcname)
                info.compress_type = zipfile.ZIP_STORED if binary else zipfile.ZIP_DEFLATED
                with open(path, "rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        dst.write(block)
                        done += len(block)
                        progress(done / total, f"zipping {path.name} ({done / 2**20:.0f} / {total / 2**20:.0f} MiB)")
        partial.replace(zip_path)
    finally:
        partial.unlink(missing_ok=True)
    return zip_path


@contextmanager
def export_lock(job_id: str):
    """One export at a time (they hold a full model in memory); a killed holder releases the lock."""
    path = workspace.exports_dir() / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another job"
        handle.close()
        raise ExportError(f"an export is already running ({holder}); wait for it to finish, then export "
                          f"{job_id}") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"job {job_id}, pid {os.getpid()}, started {time.strftime('%H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def list_exports(job_id: str | None = None) -> list[ExportFile]:
    """Finished downloads (zip / gguf files; never a hidden .partial), newest first."""
    root = workspace.exports_dir()
    found = []
    for path in root.glob(f"{job_id or '*'}/*"):
        if is_download(path) and path.suffix in (".zip", ".gguf"):
            stat = path.stat()
            found.append(ExportFile(path, path.parent.name, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda f: f.created, reverse=True)


DOWNLOAD_SUFFIXES = (".zip", ".gguf", ".csv")   # exports, and the CSV tables of batch compare / quality reports


def is_download(path) -> bool:
    """A finished download: a zip, GGUF or CSV file directly in exports/<job_id>/, not hidden (never a
    `.partial` file, a staging folder or the unzipped folder's parts). The web server serves nothing else of
    exports/."""
    path = Path(path)
    root = workspace.exports_dir().resolve()
    return (path.parent.parent.resolve() == root and not path.name.startswith(".")
            and not path.parent.name.startswith(".") and path.suffix in DOWNLOAD_SUFFIXES and path.is_file())


def download_path(path) -> Path:
    """A file the user may download: only finished exports inside the workspace's exports/ folder."""
    candidate = Path(path)
    if not workspace.is_inside(candidate, workspace.exports_dir()):
        raise ExportError(f"'{path}' is outside the workspace's exports folder; only exports can be downloaded")
    if not is_download(candidate):
        raise ExportError(f"'{candidate.name}' is not a finished export; export the job again")
    return candidate.resolve()
