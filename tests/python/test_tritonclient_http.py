"""tritonclient (HTTP), unchanged, against fer-server: health, metadata, config, inference with
binary and JSON tensors, both inputs (encoded images and the raw FP32 tensor), classification, errors
and the repository API."""

import base64
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import LABELS, SERVING, clear_faces
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server(addresses):
    client = httpclient.InferenceServerClient(url=addresses["http"])
    assert client.is_server_ready()
    return client


def preprocess(png):
    """The manifest's preprocessing, in numpy: 48×48 gray, x / 255, (x − 0.5) / 0.5."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415 (only this test needs Pillow)

    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    assert gray.shape == (48, 48)
    return ((gray * np.float32(0.003921569)) - 0.5) / 0.5


def test_health_metadata_and_config(server, addresses):
    assert server.is_server_live()
    assert server.is_server_ready()
    assert server.is_model_ready("ferplus")
    assert not server.is_model_ready("nope")
    meta = server.get_server_metadata()
    assert meta["name"] == "fer-server"
    assert "classification" in meta["extensions"]
    model = server.get_model_metadata("ferplus")
    assert model["versions"] == [SERVING]
    inputs = {i["name"]: i for i in model["inputs"]}
    assert inputs["image"]["datatype"] == "BYTES"
    tensor_input = next(i for i in model["inputs"] if i["name"] != "image")
    assert tensor_input["shape"] == [-1, 1, 48, 48]
    config = server.get_model_config("ferplus")
    # Triton's max_batch_size: images per request (--max-images, 64); the batches the server forms
    # (--max-batch-size, 32, what /v1/models reports) are its dynamic_batching preference.
    assert config["max_batch_size"] == 64
    assert config["dynamic_batching"]["preferred_batch_size"] == [32]
    models = json.load(urllib.request.urlopen(f"http://{addresses['http']}/v1/models"))
    assert {m["max_batch_size"] for m in models["models"] if m["name"] == "ferplus"} == {32}
    assert config["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("binary", [True, False])
def test_images_in_labels_out_with_the_classification_extension(server, binary):
    faces = clear_faces(24)
    # JSON carries BYTES elements as text: fer-server reads them as base64-encoded images.
    images = np.array([png if binary else base64.b64encode(png).decode() for png, _ in faces],
                      dtype=np.object_)
    inp = httpclient.InferInput("image", [len(faces)], "BYTES")
    inp.set_data_from_numpy(images, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    result = server.infer("ferplus", [inp], outputs=[out])
    top = result.as_numpy("probabilities")
    assert top.shape == (len(faces), 3)
    correct = 0
    for row, (_, label) in zip(top, faces):
        entries = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        scores = [float(s) for s, _, _ in entries]
        assert scores == sorted(scores, reverse=True)
        assert all(LABELS[int(i)] == name for _, i, name in entries)
        correct += entries[0][2] == label
    assert correct / len(faces) >= 0.8, f"{correct}/{len(faces)}"


@pytest.mark.parametrize("binary", [True, False])
def test_the_raw_tensor_gives_the_same_scores_as_the_image(server, binary):
    faces = clear_faces(4)
    tensor = np.stack([preprocess(png)[None] for png, _ in faces]).astype(np.float32)
    model = server.get_model_metadata("ferplus")
    name = next(i["name"] for i in model["inputs"] if i["name"] != "image")
    inp = httpclient.InferInput(name, list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor, binary_data=binary)
    by_tensor = server.infer("ferplus", [inp], outputs=[
        httpclient.InferRequestedOutput("probabilities", binary_data=binary)]).as_numpy("probabilities")
    img = httpclient.InferInput("image", [len(faces)], "BYTES")
    img.set_data_from_numpy(np.array([png for png, _ in faces], dtype=np.object_))
    by_image = server.infer("ferplus", [img]).as_numpy("probabilities")
    assert by_tensor.shape == (4, 8)
    np.testing.assert_allclose(by_tensor.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(by_tensor, by_image, atol=1e-3)


def test_wrong_shapes_datatypes_and_sizes_are_clear_errors(server):
    model = server.get_model_metadata("ferplus")
    name = next(i["name"] for i in model["inputs"] if i["name"] != "image")
    cases = [
        (httpclient.InferInput(name, [1, 1, 48, 47], "FP32"), np.zeros((1, 1, 48, 47), np.float32), "shape"),
        (httpclient.InferInput(name, [1, 1, 48, 48], "FP16"), np.zeros((1, 1, 48, 48), np.float16), "datatype"),
        (httpclient.InferInput("pixels", [1, 1, 48, 48], "FP32"), np.zeros((1, 1, 48, 48), np.float32), "unknown input"),
    ]
    for inp, data, words in cases:
        inp.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as error:
            server.infer("ferplus", [inp])
        assert words in str(error.value), str(error.value)
    with pytest.raises(InferenceServerException) as error:
        server.infer("nope", [cases[0][0]])
    assert "not found" in str(error.value)


def test_the_repository_api(server):
    index = server.get_model_repository_index()
    assert {"name": "ferplus", "version": SERVING, "state": "READY", "reason": ""} in index
    server.load_model("ferplus")
    assert server.is_model_ready("ferplus")
