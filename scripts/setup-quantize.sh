#!/usr/bin/env bash
# Installs ONNX Runtime's quantizer (the PyPI release of the runtime the server loads, pinned in
# training/quantize/requirements.txt) into .venv-quant/, where `fer-train quantize` finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REQUIREMENTS=training/quantize/requirements.txt
STAMP=.venv-quant/.requirements
if [ -x .venv-quant/bin/python ] && cmp -s "$REQUIREMENTS" "$STAMP"; then
  echo "quantizer already in .venv-quant"
  exit 0
fi
[ -x .venv-quant/bin/python ] || "$PYTHON" -m venv .venv-quant
.venv-quant/bin/pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
cp "$REQUIREMENTS" "$STAMP"
echo "quantizer installed in .venv-quant"
