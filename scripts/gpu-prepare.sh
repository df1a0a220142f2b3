#!/bin/bash
# Prepares what the device machine needs for the GPU measurements of BENCHMARKS.md (the device
# tool: an H200 with Python 3.12 and torch 2.11, no network, 64 MiB carried per call). Everything
# it writes is git-ignored (.git/info/exclude):
#
#   .whlck/  .whlav/   the Python packages ComfyUI needs that the machine lacks, as wheels, in two
#                      parts of under 64 MiB (install both, one call each, into /tmp/site)
#   gpu/comfy.tar.xz   the ComfyUI checkout of COMFYUI_PATH (without its tests)
#   gpu/comfyrs.xz     the comfyrs binary with the Python bridge, built for that machine
#   gpu/before.xz      the binary of the previous run of this script, if there was one, which
#                      scripts/gpu-measure.sh measures beside the new one
#   gpu/env.sh         sourced by measurement scripts there: paths, LD_LIBRARY_PATH, run NAME CMD
#   gpupack/           the Python WIDEN pack for `--reference` (from PACK_GIT, a clone or mirror)
#
#   scripts/gpu-prepare.sh LIBPYTHON_DIR|stub [PACK_GIT [PACK_REV]]
#
# LIBPYTHON_DIR holds that machine's libpython3.12.so (copied back from it once), or `stub`
# builds against a stand-in made here (scripts/gpu-bridge-build.sh says how that works), so no
# call to that machine is needed first. On the machine, in the first call (carry .whlck), then the
# second (carry .whlav), before any call that runs ComfyUI:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whlck/*.whl     (then .whlav/*.whl)
set -euo pipefail
cd "$(dirname "$0")/.."
libpython=${1:?usage: scripts/gpu-prepare.sh LIBPYTHON_DIR|stub [PACK_GIT [PACK_REV]]}
pack_git=${2:-}
pack_rev=${3:-13b122f}
: "${COMFYUI_PATH:?set COMFYUI_PATH to the ComfyUI checkout to measure with}"
mkdir -p .git/info
for d in /gpu/ /gpubin/ /gpupack/ /.whlck/ /.whlav/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done

# Wheels for CPython 3.12 on manylinux x86-64: what ComfyUI's requirements need beyond the
# machine's own packages (which packages that machine has: the device tool's own notes).
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
platforms=""
for p in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  platforms="$platforms --platform ${p}_x86_64"
done
for req in torchsde trampoline alembic Mako SQLAlchemy greenlet "av>=16.0.0" comfy-kitchen==0.2.31 comfy-aimdo==0.4.13 \
           "simpleeval>=1.0.0" blake3 "kornia>=0.7.1" kornia_rs spandrel "pydantic~=2.0" pydantic-core annotated-types \
           typing-inspection "pydantic-settings~=2.0" python-dotenv; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    --platform any -d "$w" "$req"
done
# comfy_kitchen carries a ROCm build too (59 MB of the wheel's 236): the CUDA machine never loads it.
kitchen=$(ls "$w"/comfy_kitchen-*.whl)
mkdir "$w/ck" && (cd "$w/ck" && unzip -q "$kitchen" && rm -rf comfy_kitchen/backends/hip \
  && sed -i '/backends\/hip\//d' comfy_kitchen-*.dist-info/RECORD && zip -q -r -9 "$kitchen.new" .)
mv "$kitchen.new" "$kitchen"
rm -rf .whlck .whlav && mkdir -p .whlck .whlav
mv "$w"/av-*.whl "$w"/kornia_rs-*.whl "$w"/sqlalchemy-*.whl .whlav/
mv "$w"/*.whl .whlck/

# ComfyUI and the binary, compressed (the machine has python3's lzma and tarfile).
mkdir -p gpu gpubin
tar -C "$COMFYUI_PATH" --exclude=./tests --exclude=./tests-unit --exclude=./temp --exclude=./.git \
  --exclude=./.github --exclude='*.pyc' --exclude=__pycache__ -cJf gpu/comfy.tar.xz .
bash scripts/gpu-bridge-build.sh "$libpython" 3.12 /opt/torch/.venv/bin/python3 gpubin/comfyrs
if [ -f gpu/comfyrs.xz ]; then mv gpu/comfyrs.xz gpu/before.xz; fi
xz -T0 -6 -c gpubin/comfyrs > gpu/comfyrs.xz

cat > gpu/env.sh <<'ENV'
# Sourced by the gpu/ scripts on the device machine (written by scripts/gpu-prepare.sh).
G=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unpack() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2" && chmod +x "$2"; }
B=/tmp/comfyrs; test -x $B || unpack $G/comfyrs.xz $B
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib:${LD_LIBRARY_PATH:-}
export COMFYRS_VENV=/opt/torch/.venv COMFYRS_CACHE=/tmp/cc PYTHONPATH=/tmp/site COMFYUI_PATH=/tmp/comfy PYTHONUNBUFFERED=1
test -d /tmp/comfy/comfy || { mkdir -p /tmp/comfy && python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" $G/comfy.tar.xz /tmp/comfy; }
D=/tmp/bm
mkdir -p /tmp/cc $D
# run NAME CMD...: the whole output to $OUT/NAME.txt, its end to the reply.
run() { local name=$1; shift; echo "=== $name: $*"; "$@" > $OUT/$name.txt 2>&1; echo "rc=$?"; grep -v "^\s*$" $OUT/$name.txt | tail -n ${TAILN:-28}; }
ENV

if [ -n "$pack_git" ]; then
  rm -rf gpupack && mkdir gpupack
  git --git-dir="$pack_git" archive "$pack_rev" 2>/dev/null | tar -x -C gpupack \
    || git -C "$pack_git" archive "$pack_rev" | tar -x -C gpupack
  rm -rf gpupack/tests
fi
du -sh .whlck .whlav gpu ${pack_git:+gpupack}
echo "gpu-prepare: ready (carry .whlck, then .whlav, then gpu${pack_git:+ and gpupack})"
