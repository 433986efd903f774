#!/usr/bin/env bash
# End-to-end tests with real Python clients (tritonclient over HTTP) against the release binary.
# Installs the clients from PyPI into .venv (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
# `make test` passes the binary its `cargo test --release` just built; alone, build it here.
if [ -z "${FER_SERVER_BIN:-}" ]; then
    cargo build --release -p fer-server
    export FER_SERVER_BIN=target/release/fer-server
fi
.venv/bin/python -m pytest -q tests/python
