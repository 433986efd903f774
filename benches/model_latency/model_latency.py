"""Inference cost of shipped models in ONNX Runtime (CPU), one after the other in one run.

    .venv-bench/bin/python benches/model_latency/model_latency.py models/ferplus/1 models/fer2013/1 [--threads 2]

For each model directory: milliseconds per image at batch 1 and at batch 32 (the server's default
largest batch), median of repeated runs on random inputs of the manifest's shape, and the ratio to
the first model given. Only the session's run is timed (the server adds decoding, preprocessing and
transport; scripts/bench.sh measures those).
"""

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import onnxruntime as ort


def per_image_ms(session, name, shape, batch, seconds):
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    for _ in range(5):
        session.run(None, {name: x})
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 10:
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000 / batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=pathlib.Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    for model in args.models:
        manifest = json.loads((model / "manifest.json").read_text())
        session = ort.InferenceSession(str(model / "model.onnx"), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        shape = [d for d in inp.shape[1:]]
        rows.append(
            (
                f"{manifest['name']}/{manifest['version']} ({model})",
                per_image_ms(session, inp.name, shape, 1, args.seconds),
                per_image_ms(session, inp.name, shape, 32, args.seconds),
            )
        )
    print(f"ONNX Runtime {ort.__version__}, CPU, {args.threads} intra-op threads")
    print("| model | ms per image, batch 1 | ms per image, batch 32 | × first, batch 1 | × first, batch 32 |")
    print("|---|---|---|---|---|")
    for name, b1, b32 in rows:
        print(f"| {name} | {b1:.3f} | {b32:.3f} | {b1 / rows[0][1]:.2f} | {b32 / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
