#!/usr/bin/env bash
# Checks that the workspace builds with the oldest Rust that Cargo.toml declares (rust-version),
# with the locked dependencies. Installs that toolchain with rustup when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
  echo "msrv: installing Rust $msrv (minimal profile)" >&2
  rustup toolchain install "$msrv" --profile minimal
fi
cache=${COMFYRS_CACHE:-$HOME/.cache/comfyrs}
# A target dir per checkout: cargo names the artifacts of path crates the same in every checkout
# and takes another checkout's as fresh while that checkout's files are unchanged.
target="$cache/target-msrv-$(pwd | sha256sum | cut -c1-12)"
echo "msrv: cargo +$msrv check --workspace --all-targets" >&2
CARGO_TARGET_DIR="$target" cargo "+$msrv" check --workspace --all-targets --locked
