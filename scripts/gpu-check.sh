#!/usr/bin/env bash
# The GPU check in one run: on a machine with an NVIDIA GPU, the load harness (benches/load)
# measures the shipped models on ONNX Runtime's CUDA provider, on TensorRT (FP32, FP16) and, where
# an INT8 variant ships, on TensorRT with its QDQ graph; each against raw ONNX Runtime on the same
# provider, in one run (with `/v1/analyze` rows where the detector and ../shared/images are there:
# the detector runs on the CPU). Writes one table per provider and a summary to OUT (default
# target/bench/gpu/), and prints the summary.
#
#   scripts/gpu-check.sh [--out DIR] [--requests N] [--concurrency 1,16,64,256] [--offline]
#
# What it needs, and where it gets it:
# - the GPU build of ONNX Runtime (`onnxruntime-gpu`, CUDA 13 + cuDNN 9 at run time) in
#   .ort/gpu/lib: `scripts/setup-ort.sh --gpu` fetches it (PyPI) unless it is there; or point
#   ORT_DYLIB_PATH at a libonnxruntime.so whose folder holds libonnxruntime_providers_cuda.so
#   (and _tensorrt.so with TensorRT 10 installed for the TensorRT rows);
# - the harness and the server built with `--features tensorrt` (it builds them with cargo unless
#   FER_SERVER_BIN and FER_LOAD_BIN name prebuilt ones: a machine with no network or toolchain
#   can be handed the two binaries, the repository's models/ and ../shared/data/ferplus.tar.gz).
# A provider that cannot start is reported as such in the summary and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench/gpu
REQUESTS=2000
CONCURRENCY=1,16,64,256
OFFLINE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --offline) OFFLINE=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"

if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1; then
  echo "no NVIDIA GPU here (nvidia-smi: $(cat "$OUT/gpu.txt"))" >&2
  exit 1
fi

if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  if [ ! -e .ort/gpu/lib/libonnxruntime.so ]; then
    [ "$OFFLINE" = 1 ] && { echo "no .ort/gpu/lib and --offline: set ORT_DYLIB_PATH" >&2; exit 1; }
    ./scripts/setup-ort.sh --gpu || exit 1
  fi
  export ORT_DYLIB_PATH=$PWD/.ort/gpu/lib/libonnxruntime.so
fi
ORT_DIR=$(dirname "$ORT_DYLIB_PATH")
export LD_LIBRARY_PATH="$ORT_DIR:${LD_LIBRARY_PATH:-}"
# The CUDA and cuDNN libraries that pip installs (nvidia-* wheels), when they are there.
for lib in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null); do
  [ -d "$lib" ] && LD_LIBRARY_PATH="$lib:$LD_LIBRARY_PATH"
done

if [ -z "${FER_SERVER_BIN:-}" ] || [ -z "${FER_LOAD_BIN:-}" ]; then
  cargo build --release -p fer-server --features tensorrt --bin fer-server || exit 1
  FER_LOAD_BIN=$(cargo bench -p fer-server --features tensorrt --bench load --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" and m.get("executable"):
        print(m["executable"])') || exit 1
  export FER_SERVER_BIN=$PWD/target/release/fer-server
fi
export FER_SERVER_BIN FER_LOAD_BIN
export FER_REPO=$PWD

# The default first (the harness's ratios are against the first model), then every other FER+ model shipped.
MODELS=(--model ferplus)
for d in models/ferplus-*/; do
  MODELS+=(--model "$(basename "$d")")
done

{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "GPU: $(cat "$OUT/gpu.txt"). ONNX Runtime: $ORT_DYLIB_PATH. Requests per row: $REQUESTS."
  echo
  echo "| provider | result | table |"
  echo "|---|---|---|"
} >"$SUMMARY"

run() {
  local name=$1; shift
  echo "== $name" >&2
  if RUST_BACKTRACE=0 timeout 1500 "$FER_LOAD_BIN" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
      --max-batch 64 --out "$OUT/$name.md" "${MODELS[@]}" "$@" >"$OUT/$name.log" 2>&1; then
    local line
    line=$(grep -m1 '^Targets:' "$OUT/$name.md" || echo "measured")
    echo "| $name | ${line//|/\\|} | [$name.md]($name.md) |" >>"$SUMMARY"
  else
    # The harness panics with the reason on the line after "panicked at".
    local why
    why=$(grep -m1 -A1 'panicked at' "$OUT/$name.log" | tail -n 1)
    [ -n "$why" ] || why=$(tail -n 1 "$OUT/$name.log")
    echo "| $name | failed: ${why//|//} | [$name.log]($name.log) |" >>"$SUMMARY"
  fi
}

run cuda --execution-provider cuda
mkdir -p "$OUT/trt-cache"
run tensorrt-fp32 --execution-provider tensorrt --trt-engine-cache "$OUT/trt-cache"
run tensorrt-fp16 --execution-provider tensorrt --trt-fp16 --trt-engine-cache "$OUT/trt-cache"
rm -rf "$OUT/trt-cache"
run cpu --execution-provider cpu

cat "$SUMMARY"
