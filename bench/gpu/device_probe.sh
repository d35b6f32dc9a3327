#!/usr/bin/env bash
# ONE device call: device_setup.sh (wheels, CUDA llama-cpp-python build, models),
# then bench/gpu/probe.py on every GPU. Run ON THE DEVICE from the repo root:
#   set -o pipefail; PYTHONUNBUFFERED=1 bash bench/gpu/device_probe.sh 2>&1 | tee $OUT/log.txt
# carrying .gpu/whl .gpu/src .gpu/smollm2-meta.gguf (see bench/gpu/README.md).
# Files back in $OUT (8 at most): log.txt, probe.json, logs.tgz (+ wheel parts if
# the wheel were under 58 MiB; the CUDA wheel of 0.3.36 is 257 MiB, so it is not).
set -uo pipefail
source bench/gpu/device_setup.sh || { tar -czf "$OUT/logs.tgz" -C "${LOGS:-/tmp/probe-logs}" .; exit 1; }
say "probe"
python3 bench/gpu/probe.py main --small "$LLORCH_SMALL_GGUF" --big "$([ -f "$LLORCH_BIG_GGUF" ] && echo "$LLORCH_BIG_GGUF")" \
    --out $LOGS --json "$OUT/probe.json" --runs 20 --big-runs 5 --meta-json /tmp/meta.json
RC=$?
tar -czf "$OUT/logs.tgz" -C $LOGS .
say "done rc=$RC"
exit $RC
