#!/usr/bin/env bash
# The test suite in three groups, so two cores stay busy (a test spends much of its time on one
# core: process starts, imports, engine and Ray start-up):
#   1. the tests marked `alone` (two-node clusters started with `ray start`, the SFT sweep), which
#      another Ray on the machine disturbs, one at a time; beside them the modules marked
#      `no_ray` (unit tests, and vLLM in the test's own process: no Ray);
#   2. the rest, two modules at a time (pytest-xdist, `--dist loadfile`: a module's shared
#      engines and Ray stay in one process).
# `pytest tests` runs everything in one process, one test at a time.
set -uo pipefail
PY=${1:-.venv/bin/python}
# Two test processes share the cores, so each process's torch/OpenMP pool gets one thread (Ray
# passes it on to actors); with a pool per core in each, the spinning pools fight over both cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
beside_log=$(mktemp)
"$PY" -m pytest -q --durations=10 -m "no_ray and not alone" tests >"$beside_log" 2>&1 &
beside=$!
echo "== tests that must be the only Ray on the machine (modules without Ray run beside them)"
"$PY" -m pytest -q --durations=10 -m alone tests
alone=$?
wait "$beside"
beside_rc=$?
echo "== modules without Ray"
cat "$beside_log"
rm -f "$beside_log"
echo "== the rest, two modules at a time"
"$PY" -m pytest -q --durations=25 -n 2 --dist loadfile -m "not alone and not no_ray" tests
rest=$?
[ "$alone" -eq 0 ] && [ "$beside_rc" -eq 0 ] && [ "$rest" -eq 0 ]
