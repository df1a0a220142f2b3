#!/usr/bin/env bash
# Runs the unit tests of the crates without FFI (the runtime, and core where it exists) under
# miri, which checks them for undefined behaviour. Installs nightly's miri with rustup when it is
# missing. Isolation is off: the output cache reads /proc/meminfo. Floats are deterministic: by
# default miri adds error to float operations such as powf, and core's tests check Python's
# exact results. Tests that mostly run fancy-regex's matcher (core's `re` emulation) are skipped:
# the matcher is that crate's code, and under miri each takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup run nightly cargo miri --version >/dev/null 2>&1; then
  echo "miri: installing nightly's miri and rust-src" >&2
  rustup toolchain install nightly --profile minimal --component miri,rust-src
fi
crates=(-p comfyrs-runtime)
[ -d core ] && crates+=(-p comfyrs-core)
cache=${COMFYRS_CACHE:-$HOME/.cache/comfyrs}
# A target dir per checkout: cargo names the artifacts of path crates the same in every checkout
# and takes another checkout's as fresh while that checkout's files are unchanged.
target="$cache/target-miri-$(pwd | sha256sum | cut -c1-12)"
echo "miri: cargo +nightly miri test ${crates[*]} --lib" >&2
MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-deterministic-floats" CARGO_TARGET_DIR="$target" cargo +nightly miri test "${crates[@]}" --lib -- --skip pyregex:: --skip string::tests::regex
