#!/usr/bin/env bash
# TRL in its own venv (bench/.venv-trl), so its dependency pins never touch the project's
# .venv. torch is pinned in the same pip command as trl: pip then keeps the CPU build
# (torch==2.13.0, found through this machine's pip find-links; elsewhere pass
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) instead of pulling a CUDA build.
#
#     bash bench/setup_trl.sh [python3.11] [bench/.venv-trl]
set -euo pipefail
PY="${1:-python3.11}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${2:-$HERE/.venv-trl}"
TORCH="torch==2.13.0"
TRL="trl==1.16.0"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --upgrade pip wheel
"$VENV/bin/pip" install "$TORCH"
# The reward function is rlhf.rewards (pure Python; needs pyyaml), the table is rich.
"$VENV/bin/pip" install "$TORCH" "$TRL" pyyaml rich
"$VENV/bin/python" - <<'PY'
import torch, trl, transformers
assert not torch.version.cuda, f"expected a CPU build of torch, got CUDA {torch.version.cuda}"
print(f"bench/.venv-trl: trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
PY
