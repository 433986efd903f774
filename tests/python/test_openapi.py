"""The committed OpenAPI description against the running server, both ways, by a property-based
tester (schemathesis, configured in schemathesis.toml beside this file): bodies and parameters the
description allows are accepted, those it forbids are refused with a 4xx, every answer's status,
content type and body are documented, and keys are required exactly where it says."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, running_server

API_KEY = "schemathesis-key"


def test_the_server_keeps_to_its_openapi_description(server_bin):
    # Its own server: the tester loads and unloads models through the repository API.
    with running_server(server_bin, "--api-key", API_KEY) as found:
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"),
             "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
             "--no-color", "run", str(ROOT / "openapi/openapi.json"),
             "--url", f"http://{found['http']}", "--checks", "all", "--max-examples", "30",
             "--header", f"Authorization: Bearer {API_KEY}"],
            capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
