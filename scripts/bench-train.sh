#!/usr/bin/env bash
# Training speed: fer-train (burn, flex CPU backend) against PyTorch (CPU, from PyPI) on the same
# network, batch and optimiser, in one run on this machine. Prints both and the ratio.
#
#   scripts/bench-train.sh [config] [steps]    # default: the shipped FER+ config, 20 steps
#
# PyTorch comes from PyPI into .venv-torch (its Linux wheel pulls NVIDIA's CUDA library wheels
# even for CPU use: several GB, once).
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-training/configs/ferplus-supervised.toml}"
steps="${2:-20}"
if [ ! -x .venv-torch/bin/python ] || ! .venv-torch/bin/python -c 'import torch' 2>/dev/null; then
    python3 -m venv .venv-torch
    .venv-torch/bin/pip install -q torch==2.15.0
fi
cargo build --release -q -p fer-train
burn_line=$(./target/release/fer-train bench-step --config "$config" --steps "$steps" --json)
torch_line=$(.venv-torch/bin/python benches/train_speed/torch_step.py --config "$config" --steps "$steps")
python3 - "$burn_line" "$torch_line" "$config" <<'PY'
import json, sys
burn, torch, config = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
print(f"config {config}, batch {burn['batch']}, {burn['params']} parameters (PyTorch counts {torch['params']})")
print(f"fer-train (burn flex): {burn['seconds_per_step']:.3f} s/step, {1 / burn['seconds_per_step']:.2f} steps/s")
print(f"PyTorch {torch['torch']} ({torch['threads']} threads): {torch['seconds_per_step']:.3f} s/step, {1 / torch['seconds_per_step']:.2f} steps/s")
print(f"fer-train steps/s ÷ PyTorch steps/s: {torch['seconds_per_step'] / burn['seconds_per_step']:.2f}")
PY
