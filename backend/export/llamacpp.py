"""llama.cpp itself, through the `llama-cpp-python` binding: its tokenizer, its greedy decoding, its logits and
its quantiser, run on a GGUF file the way Ollama / LM Studio / llama-cli will run it.

Why: `backend.export.gguf` writes GGUF with the `gguf` package and checks it through transformers' GGUF loader,
which re-implements llama.cpp's reading of the file. What users run is llama.cpp, so a check through llama.cpp
itself is the one that counts; and llama.cpp is the only quantiser for the k-quants (Q4_K_M, Q5_K_M, Q6_K),
which gguf 0.19 can only de-quantise.

How:
- `llama-cpp-python` is built from source once by `./studio.sh start` / `./studio.sh test` (PyPI has only the
  sdist; the build compiles llama.cpp, a few minutes). Where it is missing, `available()` is False and every
  function raises `LlamaCppMissing` (one sentence naming the set-up command); callers fall back or skip.
- Each call loads the file, does its work and frees it: a GGUF is memory-mapped, so a load costs little next to
  the work, and no llama.cpp model outlives the export that asked for it.
- llama.cpp's own logging goes to stderr from C; it is silenced (verbose=False) so a quantisation or a check
  does not flood the app's and the worker's logs.
"""
from __future__ import annotations

import ctypes
import os
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from backend.export.gguf import _FILE_TYPES, _K_QUANT_FILE_TYPES, partial_path

SETUP_COMMAND = "./studio.sh start"
# our quantisation name -> llama.cpp's llama_ftype (llama.h LLAMA_FTYPE_MOSTLY_*)
QUANT_FTYPES = {**_K_QUANT_FILE_TYPES, "q8_0": _FILE_TYPES["q8_0"]}


class LlamaCppMissing(RuntimeError):
    """llama-cpp-python is not installed (or its library does not load); the message is one sentence."""

    def __init__(self, detail: str = ""):
        super().__init__(f"llama.cpp is not installed in this environment{f' ({detail})' if detail else ''}; "
                         f"run `{SETUP_COMMAND}` once to build it (a few minutes)")


class LlamaCppError(RuntimeError):
    """llama.cpp refused a file or a request; the message is one sentence for the user."""


def available() -> bool:
    """Whether llama-cpp-python imports and its compiled library loads."""
    try:
        _binding()
    except LlamaCppMissing:
        return False
    return True


def thread_count() -> int:
    """The one place that picks llama.cpp's compute threads: OMP_NUM_THREADS when set (the test processes and
    the training worker set it, so llama.cpp does not fight torch for the cores), else every core."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------- tokenizer and model runs

def token_ids(gguf_path: Path, texts: list[str], add_bos: bool = False) -> list[list[int]]:
    """Each text as llama.cpp's own tokenizer (the file's vocab, merges and pre-tokenizer) turns it into ids.

    Special tokens written as text (`<|im_start|>` in a rendered chat template) are parsed as the single special
    token, as HF's tokenizer does; add_bos stays False because a rendered template already carries whatever
    start token the template writes, and a BOS added twice would change the prompt."""
    with _loaded(gguf_path, vocab_only=True) as llm:
        return [llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True) for text in texts]


def greedy_answer(gguf_path: Path, prompt_ids: list[int], max_new_tokens: int,
                  lora_path: Path | None = None) -> list[int]:
    """llama.cpp's greedy answer (temperature 0, its own sampler, no repetition penalty) to a tokenized prompt:
    the new token ids, ending with the end-of-generation token when the model produced one (as transformers'
    generate returns it). lora_path: a llama.cpp LoRA GGUF applied on top of the model (scale 1)."""
    llama_cpp = _binding()
    prompt_ids = [int(token) for token in prompt_ids]
    answer: list[int] = []
    if max_new_tokens <= 0:
        return answer
    with _loaded(gguf_path, n_ctx=_context_size(len(prompt_ids) + max_new_tokens), lora_path=lora_path) as llm:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True):
            answer.append(int(token))
            if llama_cpp.llama_vocab_is_eog(vocab, token) or len(answer) >= max_new_tokens:
                break
        return answer


def next_token_choices(gguf_path: Path, ids: list[int]) -> list[int]:
    """Teacher-forced: for every position of `ids`, the token llama.cpp's logits rank first as the next one
    (position i scores ids[i + 1]); one forward pass with the logits of every position kept."""
    return next_token_logits(gguf_path, ids).argmax(axis=-1).tolist()


def next_token_logits(gguf_path: Path, ids: list[int], lora_path: Path | None = None):
    """Teacher-forced: llama.cpp's logits at every position of `ids` (a float32 array, positions x vocabulary;
    row i scores the token after ids[i]), from one forward pass; lora_path as in greedy_answer."""
    import numpy as np

    ids = [int(token) for token in ids]
    with _loaded(gguf_path, n_ctx=_context_size(len(ids)), logits_all=True, lora_path=lora_path) as llm:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)


def chat_prompt(gguf_path: Path, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The conversation rendered by the chat template embedded in the file, the way llama-cpp-python's chat
    completion renders it (its Jinja2ChatFormatter, with the file's own BOS / EOS token texts). Raises
    LlamaCppError when the file carries no chat template."""
    _binding()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    with _loaded(gguf_path, vocab_only=True) as llm:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise LlamaCppError(f"'{Path(gguf_path).name}' carries no chat template (tokenizer.chat_template)")
        eos, bos = llm.token_eos(), llm.token_bos()
        eos_text = llm._model.token_get_text(eos) if eos != -1 else ""
        bos_text = llm._model.token_get_text(bos) if bos != -1 else ""
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text,
                                    add_generation_prompt=add_generation_prompt)
    return formatter(messages=messages).prompt


# ---------------------------------------------------------------- quantisation

def quantize(f16_path: Path, out_path: Path, qtype: str) -> dict:
    """Quantise an F16 (or F32) GGUF to `qtype` with llama.cpp's llama_model_quantize, the code behind
    `llama-quantize`; returns {qtype, path, bytes}. The file appears at out_path only when complete (written to
    gguf.partial_path first), and nothing is left behind when llama.cpp fails."""
    llama_cpp = _binding()
    if qtype not in QUANT_FTYPES:
        raise LlamaCppError(f"llama.cpp quantisation to '{qtype}' is not offered; choose one of "
                            f"{', '.join(QUANT_FTYPES)}")
    f16_path, out_path = Path(f16_path), Path(out_path)
    if not f16_path.is_file():
        raise LlamaCppError(f"there is no GGUF file at '{f16_path}' to quantise")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_path)
    partial.unlink(missing_ok=True)   # a torn file from a quantisation that was killed
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[qtype]
    params.nthread = thread_count()
    _recent_errors.clear()
    try:
        status = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(partial).encode(), params)
        if status != 0 or not partial.is_file():
            raise LlamaCppError(f"llama.cpp could not quantise '{f16_path.name}' to {qtype.upper()} "
                                f"(llama_model_quantize returned {status}{_last_error()})")
        partial.replace(out_path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"qtype": qtype, "path": str(out_path), "bytes": out_path.stat().st_size}


# ---------------------------------------------------------------- loading

def _binding():
    """The llama_cpp module with its logging silenced, or LlamaCppMissing. Imported here, not at module level,
    so the studio starts and every other export works where llama.cpp was not built."""
    try:
        import llama_cpp
        from llama_cpp import _logger
    except (ImportError, OSError) as error:   # OSError: the package is there but libllama.so does not load
        raise LlamaCppMissing(_short(error) if not isinstance(error, ModuleNotFoundError) else "") from None
    global _log_callback
    if _log_callback is None:
        # The binding's own callback still prints warnings with verbose=False (llama_model_quantize writes one
        # line per tensor it cannot k-quantise); ours keeps llama.cpp's last errors for our messages instead.
        _log_callback = llama_cpp.llama_log_callback(_keep_errors)   # referenced here so it is never freed
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        _logger.set_verbose(False)
    return llama_cpp


_GGML_LOG_LEVEL_ERROR = 3
_log_callback = None
_recent_errors: deque[str] = deque(maxlen=3)


def _keep_errors(level: int, text: bytes, user_data) -> None:
    if level == _GGML_LOG_LEVEL_ERROR and text.strip():
        _recent_errors.append(text.decode("utf-8", errors="replace").strip())


def _last_error() -> str:
    """llama.cpp's last logged error, for a message that says why ('' when it logged none)."""
    return f": {_recent_errors[-1][:200]}" if _recent_errors else ""


@contextmanager
def _loaded(gguf_path: Path, lora_path: Path | None = None, **options):
    """The file loaded in llama.cpp (CPU only, quiet), with the LoRA GGUF at lora_path applied when given,
    freed on exit."""
    llama_cpp = _binding()
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise LlamaCppError(f"there is no GGUF file at '{gguf_path}'")
    what = f"'{gguf_path.name}'"
    if lora_path is not None:
        if not Path(lora_path).is_file():
            raise LlamaCppError(f"there is no LoRA GGUF file at '{lora_path}'")
        options["lora_path"] = str(lora_path)
        what += f" with the LoRA adapter '{Path(lora_path).name}'"
    _recent_errors.clear()
    try:
        llm = llama_cpp.Llama(str(gguf_path), n_gpu_layers=0, n_threads=thread_count(),
                              n_threads_batch=thread_count(), verbose=False, **options)
    except (ValueError, RuntimeError) as error:   # the binding's wording for a file (or LoRA) llama.cpp cannot load
        raise LlamaCppError(f"llama.cpp cannot load {what} ({_short(error)}{_last_error()})") from None
    try:
        yield llm
    finally:
        llm.close()


def _context_size(tokens: int) -> int:
    """A context just large enough (llama.cpp allocates its KV cache for all of it), in whole 64-token steps."""
    return max(64, -(-tokens // 64) * 64)


def _short(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
