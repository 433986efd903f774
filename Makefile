# fer-server: one command to set up and serve, one to test.
CARGO ?= cargo
ARGS ?=

.PHONY: setup build run test lint bench openapi

## Fetch ONNX Runtime (PyPI wheel) into .ort/lib and build the server in release mode.
setup:
	./scripts/setup-ort.sh
	$(CARGO) build --release -p fer-server

build: setup

## Set up, then serve the shipped default model on http://127.0.0.1:8080 (Ctrl-C stops it).
run: setup
	./target/release/fer-server serve $(ARGS)

## Every check CI runs: formatting, clippy, then all tests of the workspace (release profile: the
## trainer's tests run burn, which is slow unoptimised, and `make run` shares the build).
test:
	./scripts/setup-ort.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --release

## Criterion benchmarks (preprocessing, batch inference vs the raw ort session).
bench: setup
	$(CARGO) bench -p fer-server

## Regenerate the committed OpenAPI description.
openapi:
	$(CARGO) run -q -p fer-server -- openapi --out openapi/openapi.json
