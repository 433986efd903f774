#!/usr/bin/env bash
# Fetches ONNX Runtime 1.31.1 (libonnxruntime.so) from the PyPI wheel `onnxruntime==1.31.1` into
# .ort/lib/ of this repository, where fer-server and fer-train find it without any variable set.
# Nothing else in the build downloads anything.
#
# --gpu: the `onnxruntime-gpu==1.31.1` wheel instead (CUDA and TensorRT providers; needs CUDA 13 and
# cuDNN 9 at run time) into .ort/gpu/lib; serve with ORT_DYLIB_PATH=.ort/gpu/lib/libonnxruntime.so.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
PACKAGE=onnxruntime
DEST=.ort/lib
if [ "${1:-}" = "--gpu" ]; then
  PACKAGE=onnxruntime-gpu
  DEST=.ort/gpu/lib
fi
LIB="$DEST/libonnxruntime.so.$VERSION"
if [ -f "$LIB" ]; then
  echo "ONNX Runtime $VERSION ($PACKAGE) already in $DEST"
  exit 0
fi
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  -d "$tmp" "$PACKAGE==$VERSION"
wheel=$(ls "$tmp"/*-"$VERSION"-*.whl)
"$PYTHON" - "$wheel" "$DEST" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
echo "ONNX Runtime $VERSION ($PACKAGE) installed in $DEST"
