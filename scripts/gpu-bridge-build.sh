#!/bin/bash
# Builds comfyrs with the Python bridge for a machine whose Python is not this one's (the GPU
# machine: Python 3.12, while this machine has 3.11): pyo3 is configured by a file instead of by
# running an interpreter, and links against that machine's libpython, copied here.
#
#   scripts/gpu-bridge-build.sh LIBPYTHON_DIR|stub VERSION EXECUTABLE OUT
#   e.g. scripts/gpu-bridge-build.sh stub 3.12 /opt/torch/.venv/bin/python3 gpu/comfyrs
#
# LIBPYTHON_DIR holds libpython$VERSION.so (a link to the .so.1.0 copied from that machine).
# `stub` links against a stand-in instead, made here: a library of that name that defines every
# Python symbol the build references and nothing else. The binary then names
# libpython$VERSION.so.1.0 as a needed library, and that machine's real one answers every symbol
# at run time; the stand-in is never loaded. That holds only while the binary reaches Python's
# data through its global offset table (no copy relocations, which would copy the stand-in's
# sizes): the script checks the result for them. On that machine, run the binary with
# COMFYRS_VENV at its Python's venv and LD_LIBRARY_PATH at its torch's lib folder (the binary
# links libtorch with --no-as-needed, as the device notes say).
set -euo pipefail
version=$2; executable=$3; out=$4
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$HOME/.cache/comfyrs/target-gpu-py}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# At fixed paths: pyo3 is built again whenever its configuration file's path or content changes.
mkdir -p "$target/gpu-python"
cfg=$target/gpu-python/pyo3.cfg
if [ "$1" = stub ]; then
  lib_dir=$target/gpu-python/stand-in; mkdir -p "$lib_dir"
  # First an empty stand-in: the build compiles everything and fails at the link.
  echo 'void comfyrs_python_stand_in(void) {}' > "$work/empty.c"
  gcc -shared -fPIC -Wl,-soname,libpython$version.so.1.0 -o "$lib_dir/libpython$version.so" "$work/empty.c"
else
  lib_dir=$(realpath "$1")
  test -e "$lib_dir/libpython$version.so" || { echo "gpu-bridge-build: no libpython$version.so in $lib_dir" >&2; exit 2; }
fi
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
# The other machine's libpython needs a newer glibc than this one has: its undefined symbols
# are resolved there, at run time.
build() {
  PYO3_CONFIG_FILE=$cfg CARGO_TARGET_DIR=$target \
    RUSTFLAGS="-C link-arg=-Wl,--no-as-needed -C link-arg=-ltorch -C link-arg=-Wl,--allow-shlib-undefined" \
    cargo build --release --target x86_64-unknown-linux-gnu --bin comfyrs "$@"
}
deps=$target/x86_64-unknown-linux-gnu/release/deps
if [ "$1" = stub ]; then
  build -q 2>/dev/null || true
  # Every Python symbol any compiled crate refers to (a superset of what the link keeps). Data
  # (exception objects, type objects, the None/True/False singletons, flags) as objects, the
  # rest as functions, so the linker makes the kind of relocation each needs.
  nm -u --format=just-symbols "$deps"/*.rlib "$deps"/*.o 2>/dev/null | grep -E '^_?Py' | sort -u > "$work/symbols"
  test -s "$work/symbols" || { echo "gpu-bridge-build: no Python symbols found in $deps" >&2; exit 1; }
  data='^PyExc_|^_Py_[A-Za-z]*(Struct|Object)$|Type$|^Py_[A-Za-z]*Flag$|^Py_Version$|^_PyRuntime$'
  { grep -E "$data" "$work/symbols" | sed 's/.*/char &[4096];/'
    grep -vE "$data" "$work/symbols" | sed 's/.*/void &(void) {}/'; } > "$work/stand-in.c"
  gcc -shared -fPIC -w -Wl,-soname,libpython$version.so.1.0 -o "$lib_dir/libpython$version.so" "$work/stand-in.c"
  echo "gpu-bridge-build: linking against a stand-in for libpython$version ($(wc -l < "$work/symbols") symbols)"
fi
build
bin=$target/x86_64-unknown-linux-gnu/release/comfyrs
if readelf -rW "$bin" | grep -E 'R_X86_64_COPY' | grep -qE ' _?Py'; then
  echo "gpu-bridge-build: the binary copies Python data at load time; build it against that machine's libpython instead of a stand-in" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
strip -o "$out" "$bin"
echo "gpu-bridge-build: $out"
