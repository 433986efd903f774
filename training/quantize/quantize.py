"""Static INT8 quantization of a fer-server model with ONNX Runtime's own quantizer.

Called by `fer-train quantize`, which writes the calibration faces (already preprocessed exactly
as the server preprocesses them) to a .npy file and evaluates the result itself. Steps:

1. `quant_pre_process`: ONNX Runtime's graph optimizer folds each BatchNormalization into the
   convolution before it, so a convolution is quantized with its folded weights.
2. `quantize_static`, QDQ format: per-channel signed 8-bit weights, unsigned 8-bit activations
   calibrated on the faces. `reduce_range` keeps weights to 7 bits: on x86 CPUs without VNNI,
   ONNX Runtime multiplies u8 × s8 pairs with `vpmaddubsw`, whose 16-bit sums saturate with full
   8-bit weights (measured on `ferplus/1`: −1.7 points of accuracy without it, −0.1 with it).
   `QDQDisableWeightAdjustForInt32Bias` avoids the quantizer rescaling per-channel weights whose
   int32 bias would overflow, which fails on these graphs.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


class Faces(CalibrationDataReader):
    """Feeds the calibration faces one at a time (the graph's batch axis is dynamic)."""

    def __init__(self, input_name: str, faces: np.ndarray):
        self.input_name = input_name
        self.faces = faces
        self.next = 0

    def get_next(self):
        if self.next >= len(self.faces):
            return None
        face = self.faces[self.next : self.next + 1]
        self.next += 1
        return {self.input_name: face}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="FP32 model.onnx")
    parser.add_argument("--calibration", required=True, type=Path, help="faces, float32 .npy [n, c, h, w]")
    parser.add_argument("--out", required=True, type=Path, help="INT8 model.onnx to write")
    parser.add_argument("--method", choices=sorted(METHODS), default="percentile")
    args = parser.parse_args()

    faces = np.load(args.calibration)
    if faces.dtype != np.float32 or faces.ndim != 4 or len(faces) == 0:
        print(f"{args.calibration}: expected float32 [n, c, h, w], got {faces.dtype} {faces.shape}", file=sys.stderr)
        return 2
    graph = onnx.load(str(args.model)).graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        print(f"{args.model}: expected one input, found {inputs}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        quant_pre_process(str(args.model), str(folded), skip_symbolic_shape=True)
        quantize_static(
            str(folded),
            str(args.out),
            Faces(inputs[0], faces),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[args.method],
            extra_options={"QDQDisableWeightAdjustForInt32Bias": True},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
