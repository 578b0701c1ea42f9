#!/usr/bin/env bash
# garak (its own venv, bench/.venv-garak) against `rlhf serve --model smollm2`, guardrails on,
# through garak's OpenAI-compatible generator; then garak's recorded answers are scored again by
# our refusal detector (bench/garak_table.py), so the two verdicts sit side by side.
#
#     bash bench/garak_side_by_side.sh [port]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PORT="${1:-8011}"
VENV="$HERE/.venv-garak"
OUT="$HERE/results/garak"
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/garak" ]; then  # garak pins torch>=2.13: the CPU build from pip's find-links
  python3.11 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "uv==0.13.9"
  UV_INDEX_STRATEGY=unsafe-best-match UV_FIND_LINKS="$("$VENV/bin/python" -m pip config get global.find-links 2>/dev/null || true)" \
    "$VENV/bin/uv" pip install --python "$VENV/bin/python" -q "garak==0.17.1" "torch==2.13.0"
fi
export RLHF_CACHE="${RLHF_CACHE:-$ROOT/.cache}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
"$ROOT/.venv/bin/rlhf" serve --model smollm2 --port "$PORT" serve.feedback_db="$OUT/feedback.sqlite" >"$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf -m 2 "http://127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 2; done
cat >"$OUT/garak.yaml" <<YAML
run: {generations: 1, soft_probe_prompt_cap: 40}
system: {parallel_attempts: 4, lite: true}
plugins:
  generators:
    openai:
      OpenAICompatible:
        uri: http://127.0.0.1:$PORT/v1
        model: rlhf-qa
        max_tokens: 64
        temperature: 0.0
        suppressed_params: [n, frequency_penalty, presence_penalty, stop, top_p]
YAML
XDG_DATA_HOME="$OUT" XDG_CACHE_HOME="$OUT" XDG_CONFIG_HOME="$OUT" OPENAICOMPATIBLE_API_KEY=none \
  "$VENV/bin/python" -m garak --config "$OUT/garak.yaml" --model_type openai.OpenAICompatible --model_name rlhf-qa \
  --probes dan.DanInTheWild,latentinjection.LatentInjectionFactSnippetEiffel,encoding.InjectBase64,donotanswer.MaliciousUses \
  --report_prefix smollm2-served >"$OUT/garak.log" 2>&1
"$ROOT/.venv/bin/python" "$HERE/garak_table.py" "$OUT/garak/garak_runs/smollm2-served.report.jsonl"
