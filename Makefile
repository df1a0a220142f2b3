# Two commands on a fresh machine:
#   make run    set up, build, and run the example workflows
#   make test   set up, build, and run every test
# The Python venv and the cargo target dir live in ~/.cache/comfyrs (COMFYRS_CACHE), outside the clone.

CARGO ?= cargo
RUN_WORKFLOWS ?= workflows/strings.json

.PHONY: setup build run test bench clean-cache

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

run: build
	$(CARGO) run --release --quiet -- run $(RUN_WORKFLOWS)

test: setup
	$(CARGO) test --workspace --no-fail-fast

bench: build
	$(CARGO) run --release --quiet -- bench executor
