#!/usr/bin/env bash
# ONE device call for issue 8: device_setup.sh (wheels, CUDA llama-cpp-python build, models),
# then gpu_validate.py (inventory, spread/best-fit placement, offload + NVML per process,
# eviction under --device-memory-limit, llorch vs direct llama-cpp-python). From the repo root:
#   set -o pipefail; bash bench/gpu/validate.sh 2>&1 | tee $OUT/log.txt
# carrying .gpu/whl .gpu/src .gpu/smollm2-meta.gguf. Back in $OUT: log.txt,
# gpu_validate.json, logs.tgz (llama.cpp/direct logs, every llorch process's log, nvidia-smi -q).
set -uo pipefail
source bench/gpu/device_setup.sh || { tar -czf "$OUT/logs.tgz" -C "${LOGS:-/tmp/probe-logs}" .; exit 1; }
say "validate"
nvidia-smi -q > $LOGS/nvidia-smi-q.txt 2>&1
python3 bench/gpu/gpu_validate.py main --small "$LLORCH_SMALL_GGUF" --big "$LLORCH_BIG_GGUF" \
    --data-dir /tmp/llorch-gpu --logs $LOGS --json "$OUT/gpu_validate.json" --meta-json /tmp/meta.json
RC=$?
cp -r /tmp/llorch-gpu/logs $LOGS/llorch-logs
tar -czf "$OUT/logs.tgz" -C $LOGS .
say "done rc=$RC"
exit $RC
