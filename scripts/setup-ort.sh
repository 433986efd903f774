#!/usr/bin/env bash
# Fetches ONNX Runtime 1.31.1 (libonnxruntime.so) from the PyPI wheel `onnxruntime==1.31.1` into
# .ort/lib/ of this repository, where fer-server and fer-train find it without any variable set.
# Nothing else in the build downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
DEST=.ort/lib
LIB="$DEST/libonnxruntime.so.$VERSION"
if [ -f "$LIB" ]; then
  echo "ONNX Runtime $VERSION already in $DEST"
  exit 0
fi
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  -d "$tmp" "onnxruntime==$VERSION"
wheel=$(ls "$tmp"/onnxruntime-"$VERSION"-*.whl)
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
echo "ONNX Runtime $VERSION installed in $DEST"
