#!/usr/bin/env bash
# bench/overhead.py (direct, llama_cpp.server, llorch over NATS, its HTTP edge) on a QUIET
# machine: the lent GPU host's CPUs, the GPU hidden (CUDA_VISIBLE_DEVICES=""), one engine
# thread per path as on the dev box, the SmolLM2-135M-shaped random model device_setup.sh
# writes (the bundled GGUF is over the 64 MiB a call may carry; random weights never stop
# early, so every path makes its 64 tokens).
#
#   here, once:  bash bench/gpu/prepare.sh && bash bench/gpu/concurrency.sh prepare
#   device:      ROUNDS=16 bash bench/gpu/overhead.sh
#                carry: .gpu/whl .gpu/src .gpu/smollm2-meta.gguf .gpu/benchwhl
set -o pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
OUT=${OUT:-/tmp/llorch-overhead-out}
mkdir -p "$OUT"
export BIG_LAYERS=0 LOGS=$OUT/logs
# shellcheck disable=SC1091
source bench/gpu/device_setup.sh || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-bench \
  .gpu/benchwhl/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/site-bench:$PWD PATH=/tmp/site/bin:/tmp/site-bench/bin:$PATH
export CUDA_VISIBLE_DEVICES=""
say "overhead bench: ${ROUNDS:-16} rounds, $(nproc) cpus idle but for it"
python3 -m bench.overhead --rounds "${ROUNDS:-16}" --warmup "${WARMUP:-2}" --threads 1 \
  --model-path "$LLORCH_SMALL_GGUF" --label "quiet, device CPUs" --out overhead-quiet \
  && cp bench/results/overhead-quiet.json "$OUT/"
say "done"
