# Two commands on a fresh machine:
#   make run    set up, build, and run the example workflows
#   make test   set up, build, and run every test
# The Python venv and the cargo target dir live in ~/.cache/comfyrs (COMFYRS_CACHE), outside the clone.

CARGO ?= cargo
MODELS ?= $(or $(COMFYRS_CACHE),$(HOME)/.cache/comfyrs)/models
RUN_WORKFLOWS ?= workflows/widen_sdxl_merge.json

.PHONY: setup build run test test-comfyui test-comfyui-suite msrv miri bench clean-cache

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

# The main job: a headless WIDEN merge (tiny SDXL base + a LoRA, saved as a checkpoint) on
# freshly generated fixture models.
run: build
	$(CARGO) run --release --quiet -- fixtures --models-dir $(MODELS) > /dev/null
	$(CARGO) run --release --quiet -- run $(RUN_WORKFLOWS) --models-dir $(MODELS)

test: setup
	$(CARGO) test --workspace --no-fail-fast
	@bash scripts/msrv.sh
	@bash scripts/miri.sh

# The crates that run ComfyUI's Python nodes (the bridge, the CLI and server end to end) again,
# against the ComfyUI checkout in COMFYUI_PATH (setup installs its requirements into the venv),
# then that ComfyUI's own execution test suite against `comfyrs serve`.
test-comfyui:
	@test -n "$$COMFYUI_PATH" || { echo "make test-comfyui: set COMFYUI_PATH to a ComfyUI checkout" >&2; exit 2; }
	@bash scripts/setup.sh
	$(CARGO) test -p comfyrs-bridge -p comfyrs --no-fail-fast
	$(CARGO) build
	bash scripts/comfyui-suite.sh "$$COMFYUI_PATH"

# The workspace builds with the Rust version Cargo.toml declares (rust-version).
msrv:
	@bash scripts/msrv.sh

# ComfyUI's own execution test suite (tests/execution of the ComfyUI in COMFYUI_PATH) against
# `comfyrs serve`; fails on a failure tests/comfyui-suite/EXPECTED.md does not list, or on a listed
# one that passes. SUITE_PROFILE=release runs the release build.
SUITE_PROFILE ?= debug
test-comfyui-suite: setup
	$(CARGO) build $(if $(filter release,$(SUITE_PROFILE)),--release)
	COMFYRS_PROFILE=$(SUITE_PROFILE) bash scripts/comfyui-suite.sh "$(COMFYUI_PATH)"

# The FFI-free crates' unit tests under miri (undefined behaviour checks).
miri:
	@bash scripts/miri.sh

bench: build
	$(CARGO) run --release --quiet -- bench executor

# Removes the venv, the cargo target dir and the fixture models (all outside the clone).
clean-cache:
	rm -rf "$(or $(COMFYRS_CACHE),$(HOME)/.cache/comfyrs)"
