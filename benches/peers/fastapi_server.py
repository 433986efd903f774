"""The peer fer-server is measured against: the FastAPI + onnxruntime + Pillow server a Python
user would write in an afternoon, serving the same model with the same preprocessing (the
model's manifest: grayscale, bilinear resize to its input size, scale, mean, std).

POST /v1/classify with an encoded image as the body (as fer-server takes it) answers the same
JSON shape: {"model": ..., "results": [{"label", "confidence", "scores"}]}.

Run: FER_MODEL_DIR=models/ferplus/1 uvicorn fastapi_server:app --workers N --port 9000
"""

import io
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image

MODEL_DIR = os.environ.get("FER_MODEL_DIR", "models/ferplus/1")

with open(os.path.join(MODEL_DIR, "manifest.json")) as f:
    manifest = json.load(f)
labels = manifest["labels"]
size = (manifest["input"]["width"], manifest["input"]["height"])
mode = "L" if manifest["input"]["channels"] == "gray" else "RGB"
pre = manifest["preprocessing"]
scale = np.float32(pre["scale"])
mean = np.array(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
std = np.array(pre["std"], dtype=np.float32).reshape(-1, 1, 1)

options = ort.SessionOptions()
threads = int(os.environ.get("FER_PEER_INTRA_OP_THREADS", "0"))
if threads:
    options.intra_op_num_threads = threads
session = ort.InferenceSession(
    os.path.join(MODEL_DIR, "model.onnx"), options, providers=["CPUExecutionProvider"]
)
input_name = session.get_inputs()[0].name

app = FastAPI()


def preprocess(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert(mode)
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) * scale
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    return ((x - mean) / std)[None]


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.post("/v1/classify")
async def classify(request: Request):
    data = await request.body()
    try:
        x = preprocess(data)
    except Exception as e:
        raise HTTPException(status_code=400, detail=f"cannot decode image: {e}")
    logits = session.run(None, {input_name: x})[0][0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    best = int(p.argmax())
    return {
        "model": {"name": manifest["name"], "version": manifest["version"]},
        "results": [
            {
                "label": labels[best],
                "confidence": float(p[best]),
                "scores": {l: float(s) for l, s in zip(labels, p)},
            }
        ],
    }
