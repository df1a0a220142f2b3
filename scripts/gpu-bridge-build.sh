#!/bin/bash
# Builds comfyrs with the Python bridge for a machine whose Python is not this one's (the GPU
# machine: Python 3.12, while this machine has 3.11): pyo3 is configured by a file instead of by
# running an interpreter, and links against that machine's libpython, copied here.
#
#   scripts/gpu-bridge-build.sh LIBPYTHON_DIR VERSION EXECUTABLE OUT
#   e.g. scripts/gpu-bridge-build.sh ~/gpu-py 3.12 /opt/torch/.venv/bin/python3 gpu/comfyrs
#
# LIBPYTHON_DIR holds libpython$VERSION.so (a link to the .so.1.0 copied from that machine). On
# that machine, run the binary with COMFYRS_VENV at its Python's venv and LD_LIBRARY_PATH at its
# torch's lib folder (the binary links libtorch with --no-as-needed, as the device notes say).
set -euo pipefail
lib_dir=$(realpath "$1"); version=$2; executable=$3; out=$4
test -e "$lib_dir/libpython$version.so" || { echo "gpu-bridge-build: no libpython$version.so in $lib_dir" >&2; exit 2; }
cfg=$(mktemp)
trap 'rm -f "$cfg"' EXIT
cat > "$cfg" <<CFG
implementation=CPython
version=$version
shared=true
abi3=false
lib_name=python$version
lib_dir=$lib_dir
executable=$executable
pointer_width=64
build_flags=
suppress_build_script_link_lines=false
CFG
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$HOME/.cache/comfyrs/target-gpu-py}
# The other machine's libpython needs a newer glibc than this one has: its undefined symbols
# are resolved there, at run time.
PYO3_CONFIG_FILE=$cfg CARGO_TARGET_DIR=$target \
  RUSTFLAGS="-C link-arg=-Wl,--no-as-needed -C link-arg=-ltorch -C link-arg=-Wl,--allow-shlib-undefined" \
  cargo build --release --target x86_64-unknown-linux-gnu --bin comfyrs
mkdir -p "$(dirname "$out")"
strip -o "$out" "$target/x86_64-unknown-linux-gnu/release/comfyrs"
echo "gpu-bridge-build: $out"
