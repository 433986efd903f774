"""tritonclient (gRPC), unchanged, against fer-server's `inference.GRPCInferenceService`: health,
metadata, inference with both inputs, classification, the streaming API, and error codes."""

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import LABELS, SERVING, clear_faces
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def client(addresses):
    return grpcclient.InferenceServerClient(url=addresses["grpc"])


def images_input(faces):
    inp = grpcclient.InferInput("image", [len(faces)], "BYTES")
    inp.set_data_from_numpy(np.array([png for png, _ in faces], dtype=np.object_))
    return inp


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("ferplus")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "fer-server"
    meta = client.get_model_metadata("ferplus")
    assert meta.versions == [SERVING]
    assert [i.name for i in meta.inputs][1] == "image"
    assert list(meta.outputs[1].shape) == [-1, 8]


def test_images_in_labels_out_with_classification(client):
    faces = clear_faces(24)
    out = grpcclient.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("ferplus", [images_input(faces)], outputs=[out])
    top = result.as_numpy("probabilities")
    assert top.shape == (len(faces), 2)
    labels = [row[0].decode().split(":")[2] for row in top]
    correct = sum(label == want for label, (_, want) in zip(labels, faces))
    assert correct / len(faces) >= 0.8, f"{correct}/{len(faces)}"
    assert all(row[0].decode().split(":")[2] in LABELS for row in top)


def test_probabilities_as_a_tensor(client):
    faces = clear_faces(3)
    result = client.infer("ferplus", [images_input(faces)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.get_response().model_version == SERVING


def test_the_stream_answers_in_order(client):
    faces = clear_faces(10)
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, face in enumerate(faces):
            client.async_stream_infer("ferplus", [images_input([face])], request_id=str(i))
        got = [answers.get(timeout=30) for _ in faces]
    finally:
        client.stop_stream()
    for i, (result, error) in enumerate(got):
        assert error is None, error
        assert result.get_response().id == str(i)
        assert result.as_numpy("probabilities").shape == (1, 8)


def test_errors_carry_grpc_codes(client):
    meta = client.get_model_metadata("ferplus")
    wrong = grpcclient.InferInput(meta.inputs[0].name, [1, 1, 48, 47], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 48, 47), np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("ferplus", [wrong])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        client.infer("nope", [wrong])
    assert error.value.status() == "StatusCode.NOT_FOUND"
