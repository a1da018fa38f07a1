#!/usr/bin/env bash
# Build .gpu_check_deps/: the pure-Python packages scripts/gpu_check needs that a bare GPU machine (Python 3.12
# with torch and triton, no network) may lack: pytest (+ hypothesis, pytest-timeout for the gpu tests) and
# tqdm, at the uv.lock versions. Carry the folder to the GPU machine (docs/benchmarks.md). Run it here, with uv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
req="$(mktemp)"
trap 'rm -f "$req"' EXIT
uv export --all-groups --no-hashes --no-emit-workspace -q \
  | grep -E '^(pytest|pytest-timeout|pluggy|iniconfig|packaging|pygments|hypothesis|sortedcontainers|attrs|tqdm)==' \
  | sed 's/ *;.*//' >"$req"
rm -rf .gpu_check_deps
uv pip install -q --target .gpu_check_deps --python-version 3.12 --no-deps -r "$req"
echo "built .gpu_check_deps ($(du -sh .gpu_check_deps | cut -f1)): $(tr '\n' ' ' <"$req")"
