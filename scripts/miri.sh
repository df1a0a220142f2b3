#!/usr/bin/env bash
# Runs the unit tests of the crates without FFI (the runtime, and core where it exists) under
# miri, which checks them for undefined behaviour. Installs nightly's miri with rustup when it is
# missing. Isolation is off: the output cache reads /proc/meminfo. Floats are deterministic: by
# default miri adds error to float operations such as powf, and core's tests check Python's
# exact results.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup run nightly cargo miri --version >/dev/null 2>&1; then
  echo "miri: installing nightly's miri and rust-src" >&2
  rustup toolchain install nightly --profile minimal --component miri,rust-src
fi
crates=(-p comfyrs-runtime)
[ -d core ] && crates+=(-p comfyrs-core)
cache=${COMFYRS_CACHE:-$HOME/.cache/comfyrs}
echo "miri: cargo +nightly miri test ${crates[*]} --lib" >&2
MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-deterministic-floats" CARGO_TARGET_DIR="$cache/target-miri" cargo +nightly miri test "${crates[@]}" --lib
