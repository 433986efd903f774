"""The server under test and real faces, shared by the client tests. Run by `make test`
(scripts/python-tests.sh); FER_SERVER_BIN names the binary."""

import contextlib
import json
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The version of `ferplus` served by default (the newest; the version policy is latest:1).
SERVING = str(max(int(p.name) for p in (ROOT / "models/ferplus").iterdir() if p.name.isdigit()))
LABELS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def clear_faces(count):
    """FER+ validation faces on which at least 9 of 10 annotators agree, read in place."""
    votes, images = {}, {}
    with tarfile.open(ROOT / "../shared/data/ferplus.tar.gz") as archive:
        for member in archive:
            if not member.name.startswith("ferplus/valid/"):
                continue
            data = archive.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("label.csv"):
                for line in data.decode().splitlines():
                    # name,"(x, y, w, h)",ten vote counts
                    fields = line.split(",")
                    try:
                        counts = [int(v) for v in line.rsplit(")", 1)[1].strip('",').split(",")]
                    except (ValueError, IndexError):
                        continue
                    if len(counts) != 10:
                        continue
                    best = max(range(10), key=lambda i: counts[i])
                    if best < 8 and counts[best] >= 9:
                        votes[fields[0]] = LABELS[best]
            elif member.name.endswith(".png"):
                images[member.name.rsplit("/", 1)[1]] = data
    faces = [(images[name], label) for name, label in sorted(votes.items()) if name in images]
    return faces[:count]


@pytest.fixture(scope="session")
def server_bin():
    """The fer-server binary under test."""
    return os.environ.get("FER_SERVER_BIN", str(ROOT / "target/release/fer-server"))


@contextlib.contextmanager
def running_server(binary, *extra):
    """Runs fer-server on ephemeral ports with `extra` flags; yields {"http": .., "grpc": ..}."""
    process = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
         "--log-format", "json", "--models-dir", str(ROOT / "models"), "--default-model", "ferplus",
         *extra],
        stderr=subprocess.PIPE, text=True)
    found = {}
    for line in process.stderr:
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "listening":
            found["http"] = fields["address"]
        elif fields.get("message") == "grpc listening":
            found["grpc"] = fields["address"]
        if len(found) == 2:
            break
    assert len(found) == 2, "the server did not start"
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    time.sleep(0.2)
    try:
        yield found
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def addresses(server_bin):
    """Starts fer-server on ephemeral ports; {"http": "host:port", "grpc": "host:port"}."""
    with running_server(server_bin) as found:
        yield found
