#!/usr/bin/env bash
# Device-side setup, meant to be SOURCED on the device machine from the repo root
# with .gpu/whl, .gpu/src and .gpu/smollm2-meta.gguf carried:
#   source bench/gpu/device_setup.sh || return 1
# It: installs the carried wheels into /tmp/site; builds the CUDA llama-cpp-python
# wheel from the slim sdist (146 s on 32 cores; or reuses .gpu/cudawhl/*.part-*);
# installs it; writes /tmp/models/small.gguf (SmolLM2-135M shape, 138 MiB) and
# /tmp/models/big.gguf (BIG_LAYERS=16 -> 3.7 GiB; BIG_LAYERS=0 skips it), both
# random-weight Q8_0 with the real SmolLM2 tokenizer. Afterwards PYTHONPATH
# holds /tmp/site and the repo root, PATH holds /tmp/site/bin (nats-server), and
# LLORCH_SMALL_GGUF / LLORCH_BIG_GGUF / LLORCH_CUDA_WHEEL / LLORCH_BUILD_S are set.
# CMAKE_EXTRA: more CMake switches for the wheel (-DGGML_CUDA_FA=OFF: no flash-attention
# kernels, a shorter build when the device time left is short).
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/llorch-probe-out}
G=.gpu
LOGS=${LOGS:-/tmp/probe-logs}
BIG_LAYERS=${BIG_LAYERS:-16}   # 16 x (4096 embd, 14336 ff) Q8_0 = 3.7 GiB
T0=${T0:-$SECONDS}
say() { echo "[+$((SECONDS - T0))s] $*"; }
mkdir -p "$OUT" $LOGS /tmp/models /tmp/cudawhl
command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin

_llorch_setup() {
  say "host $(hostname), $(nproc) cpus, $(python3 --version), nvcc: $(nvcc --version | tail -2 | head -1)"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv

  # 1. carried wheels -> /tmp/site (numpy, jinja2, typing-extensions, pynvml: the image's own)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $G/whl/*.whl || return 1
  export PYTHONPATH=/tmp/site
  python3 -c "import numpy, jinja2, typing_extensions, pynvml, scikit_build_core, diskcache, gguf, nats, msgspec; \
print('deps ok: numpy', numpy.__version__, 'skbuild-core', scikit_build_core.__version__, 'pynvml', pynvml.__file__)" || return 1

  # 2. models in the background, while the wheel builds
  ( python3 bench/gpu/make_model.py build --meta $G/smollm2-meta.gguf --out /tmp/models/small.gguf &&
    { [ "$BIG_LAYERS" = 0 ] || python3 bench/gpu/make_model.py build --meta $G/smollm2-meta.gguf --out /tmp/models/big.gguf \
        --layers "$BIG_LAYERS" --embd 4096 --ff 14336 --heads 32 --kv-heads 8; } ) > $LOGS/make_model.txt 2>&1 &
  MK=$!

  # 3. CUDA wheel: reuse carried parts, else build from the slim sdist
  REUSED=0
  if ls $G/cudawhl/*.whl.part-aa >/dev/null 2>&1; then
    first=$(ls $G/cudawhl/*.whl.part-aa | head -1)
    name=$(basename "${first%.part-aa}")
    cat $G/cudawhl/"$name".part-* > /tmp/cudawhl/"$name"
    REUSED=1; BUILD_S=0
    say "reusing carried wheel $name"
  else
    tar -xzf $G/src/llama_cpp_python-*-slim.tar.gz -C /tmp
    src=$(ls -d /tmp/llama_cpp_python-*/ | head -1)
    say "building CUDA wheel from $src"
    tb=$SECONDS
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF ${CMAKE_EXTRA:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      python3 -m pip wheel --no-build-isolation --no-deps --no-index -w /tmp/cudawhl "$src" \
      > $LOGS/build.txt 2>&1 || { tail -60 $LOGS/build.txt; tar -czf "$OUT/logs.tgz" -C $LOGS .; return 1; }
    BUILD_S=$((SECONDS - tb))
  fi
  whl=$(ls /tmp/cudawhl/*.whl | head -1)
  WSIZE=$(stat -c %s "$whl"); WSHA=$(sha256sum "$whl" | cut -d' ' -f1)
  say "wheel $(basename "$whl"): $WSIZE bytes, sha256 $WSHA, build ${BUILD_S}s (reused=$REUSED)"
  if [ $REUSED = 0 ] && [ "$WSIZE" -lt $((58 * 1024 * 1024)) ]; then
    split -b 15M "$whl" "$OUT/$(basename "$whl").part-"
    say "wheel parts back: $(ls "$OUT" | grep -c part-)"
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$whl" || return 1
  python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'gpu offload:', llama_cpp.llama_supports_gpu_offload())"

  wait $MK || { cat $LOGS/make_model.txt; return 1; }
  cat $LOGS/make_model.txt
  ls -la /tmp/models
  printf '{"wheel": "%s", "wheel_bytes": %s, "wheel_sha256": "%s", "build_s": %s, "wheel_reused": %s, "small_bytes": %s, "big_bytes": %s, "nproc": %s}\n' \
    "$(basename "$whl")" "$WSIZE" "$WSHA" "$BUILD_S" "$REUSED" \
    "$(stat -c %s /tmp/models/small.gguf)" "$(stat -c %s /tmp/models/big.gguf 2>/dev/null || echo 0)" "$(nproc)" > /tmp/meta.json

  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
  export LLORCH_SMALL_GGUF=/tmp/models/small.gguf LLORCH_BIG_GGUF=/tmp/models/big.gguf
  export LLORCH_CUDA_WHEEL=$whl LLORCH_BUILD_S=$BUILD_S
  say "setup done"
}
_llorch_setup
