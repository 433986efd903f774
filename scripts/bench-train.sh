#!/usr/bin/env bash
# Training speed: fer-train (burn's flex CPU backend, and its tch backend on libtorch) against
# PyTorch (CPU, from PyPI) on the same network, batch and optimiser, in one run on this machine.
# Prints each and the ratios.
#
#   scripts/bench-train.sh [config] [steps]    # default: the shipped FER+ config, 20 steps
#
# PyTorch comes from PyPI into .venv-torch (its Linux wheel pulls NVIDIA's CUDA library wheels
# even for CPU use: several GB, once). The tch backend is measured when scripts/setup-libtorch.sh
# has put a libtorch in .libtorch/ (BENCH_TCH=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-training/configs/ferplus-supervised.toml}"
steps="${2:-20}"
if [ ! -x .venv-torch/bin/python ] || ! .venv-torch/bin/python -c 'import torch' 2>/dev/null; then
    python3 -m venv .venv-torch
    .venv-torch/bin/pip install -q torch==2.15.0
fi
tch_line='null'
if [ "${BENCH_TCH:-1}" != 0 ] && [ -f .libtorch/build-version ]; then
    export LIBTORCH="$PWD/.libtorch" LD_LIBRARY_PATH="$PWD/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    cargo build --release -q -p fer-train --features tch
    tch_line=$(./target/release/fer-train bench-step --backend tch --config "$config" --steps "$steps" --json)
else
    cargo build --release -q -p fer-train
fi
flex_line=$(./target/release/fer-train bench-step --backend flex --config "$config" --steps "$steps" --json)
torch_line=$(.venv-torch/bin/python benches/train_speed/torch_step.py --config "$config" --steps "$steps")
python3 - "$flex_line" "$tch_line" "$torch_line" "$config" <<'PY'
import json, sys
flex, tch, torch, config = *map(json.loads, sys.argv[1:4]), sys.argv[4]
print(f"config {config}, batch {flex['batch']}, {flex['params']} parameters (PyTorch counts {torch['params']})")
rows = [("fer-train (burn flex)", flex), ("fer-train (burn tch, libtorch)", tch)]
for name, r in rows:
    if r:
        print(f"{name}: {r['seconds_per_step']:.3f} s/step, {1 / r['seconds_per_step']:.2f} steps/s")
print(f"PyTorch {torch['torch']} ({torch['threads']} threads): {torch['seconds_per_step']:.3f} s/step, {1 / torch['seconds_per_step']:.2f} steps/s")
for name, r in rows:
    if r:
        print(f"{name} steps/s ÷ PyTorch steps/s: {torch['seconds_per_step'] / r['seconds_per_step']:.2f}")
if tch:
    print(f"tch steps/s ÷ flex steps/s: {flex['seconds_per_step'] / tch['seconds_per_step']:.2f}")
PY
