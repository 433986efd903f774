#!/usr/bin/env bash
# The performance table in one command: fer-server against raw ONNX Runtime and against the
# FastAPI + onnxruntime + Pillow peer (installed here from PyPI into .venv-bench), same machine,
# same model, same images, one run. Extra arguments go to the harness (benches/load/main.rs),
# e.g. --requests 5000 --concurrency 1,4,16,64. The table is printed and written to
# target/bench/load.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-ort.sh
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/pip install -q --disable-pip-version-check -r benches/peers/requirements.txt
cargo bench -p fer-server --bench load -- \
    --peer-python .venv-bench/bin/python --out target/bench/load.md "$@"
