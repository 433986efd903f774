"""scripts/ensemble_onnx.py, the measuring tool behind the README's flip and ensemble figures: its
scores on hand-made probabilities, and its figures for a shipped model against the ones the trainer
recorded in that model's manifest (FER+ PNGs decode the same in Pillow as in the trainer)."""

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts/ensemble_onnx.py"
spec = importlib.util.spec_from_file_location("ensemble_onnx", SCRIPT)
ensemble_onnx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ensemble_onnx)


def test_scores_are_accuracy_macro_f1_and_log_loss():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    truth = np.array([0, 1, 1, 2])
    accuracy, macro_f1, log_loss = ensemble_onnx.scores(probs, truth, 3)
    assert accuracy == pytest.approx(0.75)
    # class 0: 1 right, 1 false positive -> 2/3; class 1: 1 right, 1 missed -> 2/3; class 2: 1.
    assert macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert log_loss == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4)


def test_a_shipped_model_scores_what_its_manifest_recorded():
    version = ROOT / "models/ferplus-small/1"
    metrics = json.loads((version / "manifest.json").read_text())["provenance"]["metrics"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(version)], check=True, capture_output=True, text=True
    ).stdout
    plain = next(line for line in out.splitlines() if line.startswith("| ferplus-small/1 | no |"))
    accuracy, macro_f1, log_loss = (cell.strip() for cell in plain.split("|")[3:6])
    assert f"{int(metrics['val_images'])} validation faces" in out
    assert accuracy == f"{metrics['val_accuracy']:.2%}"
    assert macro_f1 == f"{metrics['val_macro_f1']:.4f}"
    assert 0.0 < float(log_loss) < math.log(8)
