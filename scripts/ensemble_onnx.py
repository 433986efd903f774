#!/usr/bin/env python3
"""Score exported model versions, alone and averaged, on their validation set.

    python3 scripts/ensemble_onnx.py models/ferplus/2 /tmp/ensmodels/ferplus-dtm/1 [...]

For models whose run folders are gone (so `fer-train export --run A --run B` cannot build the
ensemble graph), this asks the same question of the exported graphs: each version alone, and the
mean of the class probabilities of every combination of two or more, as they are and with test-time
flip (each face's logits averaged with its mirror image's, as `--test-time-flip` folds into a
graph). Beside accuracy and macro-F1, the log loss (mean -ln p of the true label), which moves with
every face's probability, not only with the few faces near a decision boundary. Reads FER+ valid (8
labels) or FER2013 val (7) from ../shared/data/ in place and labels FER+ faces by the trainer's
majority rule (first largest vote; "unknown"/"not a face" majorities dropped). FER+'s PNGs give the
trainer's own figures to the last face; FER2013's JPEGs decode a little differently in Pillow than
in the trainer's decoder (`fer2013/2`: 67.87 % here, 67.71 % in its manifest), so FER2013 figures
are near the trainer's, not equal to them.
Needs onnxruntime, numpy and pillow (pip; `scripts/python-tests.sh` installs them into .venv).
"""

import argparse
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def ferplus_valid(archive):
    with tarfile.open(archive) as tar:
        labels = tar.extractfile("ferplus/valid/label.csv").read().decode()
        rows = []
        for line in labels.splitlines():
            file, rest = line.split(",", 1)
            after_box = rest.rsplit(")", 1)[-1]
            votes = [int(s.strip().strip('"')) for s in after_box.split(",") if s.strip().strip('"')]
            if len(votes) != 10 or sum(votes) == 0:
                continue
            best = max(range(10), key=lambda i: (votes[i], -i))
            if best < 8:
                rows.append((file, best))
        rows.sort()
        images = [tar.extractfile(f"ferplus/valid/{file}").read() for file, _ in rows]
    return images, np.array([c for _, c in rows])


def fer2013_val(archive):
    with tarfile.open(archive) as tar:
        rows = []
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "val":
                rows.append((member.name, FER2013_CLASSES.index(parts[2])))
        rows.sort()
        images = [tar.extractfile(name).read() for name, _ in rows]
    return images, np.array([c for _, c in rows])


def to_input(images, manifest):
    pre = manifest["preprocessing"]
    side = (manifest["input"]["width"], manifest["input"]["height"])
    gray = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(b)).convert("L").resize(side, Image.BILINEAR), np.float32)
            for b in images
        ]
    )
    return ((gray * pre["scale"] - pre["mean"][0]) / pre["std"][0])[:, None]


def logits(session, x):
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def scores(probs, truth, classes):
    pred = probs.argmax(1)
    f1 = []
    for c in range(classes):
        tp = np.sum((pred == c) & (truth == c))
        wrong = np.sum((pred == c) != (truth == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + wrong))
    log_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None))))
    return (pred == truth).mean(), float(np.mean(f1)), log_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path, help="model version folders (manifest.json + model.onnx)")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data")
    args = parser.parse_args()

    manifests = [json.loads((v / "manifest.json").read_text()) for v in args.versions]
    labels = {tuple(m["labels"]) for m in manifests}
    if len(labels) != 1:
        parser.error("the versions must share one label set")
    classes = len(manifests[0]["labels"])
    if classes == 8:
        images, truth = ferplus_valid(args.data_dir / "ferplus.tar.gz")
    else:
        images, truth = fer2013_val(args.data_dir / "fer2013.tar.gz")
    names = [f"{m['name']}/{m['version']}" for m in manifests]
    print(f"{len(truth)} validation faces; probabilities averaged over each combination")
    if classes != 8:
        print("(FER2013: JPEGs decoded by Pillow, not the trainer's decoder; figures differ slightly)")
    print("| graph | test-time flip | val accuracy | val macro-F1 | val log loss |\n|---|---|---|---|---|")
    plain, mirrored = {}, {}
    for name, version, manifest in zip(names, args.versions, manifests):
        session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
        x = to_input(images, manifest)
        plain[name] = logits(session, x)
        mirrored[name] = logits(session, x[..., ::-1].copy())
    for flip in (False, True):
        probs = {n: softmax((plain[n] + mirrored[n]) / 2 if flip else plain[n]) for n in names}
        for size in range(1, len(names) + 1):
            for combo in itertools.combinations(names, size):
                accuracy, macro_f1, log_loss = scores(sum(probs[n] for n in combo) / size, truth, classes)
                print(
                    f"| {' + '.join(combo)} | {'yes' if flip else 'no'} | {accuracy:.2%} | {macro_f1:.4f} | {log_loss:.4f} |"
                )


if __name__ == "__main__":
    main()
