#!/bin/bash
# The GPU measurements of BENCHMARKS.md, by name, on the device machine (after the wheels of
# scripts/gpu-prepare.sh are installed into /tmp/site; carry gpu/, and gpupack/ for `reference`):
#
#   bash scripts/gpu-measure.sh SET [SET ...]
#
#   loop12     the full-size loop under a 12 GiB limit, with ComfyUI's INFO log: how often
#              ComfyUI offloaded part of the UNet, its unpin warnings, and which path the Exit's
#              hand-over took when the device was full (docs/architecture.md, "Memory")
#   loop24     the same under 24 GiB
#   merge12    `bench merge` W1-W3 and the slider changes, no limit and 12 GiB, no -v
#   reference  the loop beside ComfyUI with the Python WIDEN pack (gpupack/), no limit
#   products12 the new binary alone under 12 GiB, subtree results kept as their products or not
#              (`[widen] subtree_products` off, then auto): the loop, then `bench merge`
#              (about 7 minutes; BENCHMARKS.md, "Subtree results as their products (CPU, 2026-12-05,
#              nineteenth session)")
#   pagelocked12  the loop under 12 GiB: the new binary with page-locked base copies off
#              (`[widen] page_locked_bases` 0), then by default, then the one before where there
#              is one (BENCHMARKS.md, "Page-locked base copies, and stale entries first (H100,
#              2026-12-06, twenty-second session)")
#   profile12  where a 12 GiB slider change spends its time: `-v` (every step of every chunk waits
#              for the device and is logged with its time), the loop with 2 changes of each kind,
#              then `bench merge` W2 with and without the limit; not timings to report
#
# Where gpu/before.xz exists (scripts/gpu-prepare.sh keeps the binary it replaced), loop12 and
# merge12 run it too, in the same call, as NAME-before. Each run's whole output lands in
# $OUT/NAME.txt; the reply shows its end. Never -v for timings (docs/architecture.md, "Memory":
# every step waits for the device so the log can time it).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/gpu/env.sh"
# The binaries to measure: the new one, and the one before it where there is one.
binaries=("$B")
if [ -f "$G/before.xz" ]; then
  test -x /tmp/comfyrs-before || unpack "$G/before.xz" /tmp/comfyrs-before
  binaries+=(/tmp/comfyrs-before)
fi
suffix() { [ "$1" = "$B" ] && echo "" || echo "-before"; }

# ComfyUI's own log at INFO (model loads, partial offloads), through a sitecustomize.
python_log() {
  mkdir -p /tmp/pylog
  printf 'import logging, sys\nlogging.basicConfig(level=logging.INFO, stream=sys.stderr, format="py %%(relativeCreated)d %%(name)s: %%(message)s")\n' > /tmp/pylog/sitecustomize.py
  export PYTHONPATH=/tmp/pylog:/tmp/site
}

count() {
  local f=$OUT/$1.txt
  echo "== $1: $(grep -c 'Unloaded partially' "$f") partial offloads, $(grep -c 'Tried to unpin' "$f") unpin warnings," \
    "$(grep -c "stay in host memory (no room" "$f") hand-overs that left weights in host memory"
}

for set in "$@"; do
  case $set in
    loop12|loop24)
      python_log
      limit=${set#loop}GiB
      for b in "${binaries[@]}"; do
        name="loop$limit$(suffix "$b")"
        TAILN=12 run "$name" "$b" bench loop --repeat 3 --dir $D --device-memory $limit
        count "$name"
      done
      ;;
    merge12)
      m="bench merge --hold-base --repeat 3 --workloads w1,w2,w3 --dir $D"
      for b in "${binaries[@]}"; do
        TAILN=14 run "merge$(suffix "$b")" "$b" $m
        TAILN=14 run "merge12$(suffix "$b")" "$b" $m --device-memory 12GiB
      done
      ;;
    products12)
      python_log
      for p in off auto; do
        COMFYRS_WIDEN_SUBTREE_PRODUCTS=$p TAILN=12 run "loop12GiB-products-$p" "$B" bench loop --repeat 3 --dir $D --device-memory 12GiB
      done
      for p in off auto; do
        COMFYRS_WIDEN_SUBTREE_PRODUCTS=$p TAILN=14 run "merge12-products-$p" "$B" bench merge --hold-base --repeat 3 --workloads w1,w2,w3 --dir $D --device-memory 12GiB
      done
      ;;
    pagelocked12)
      python_log
      for p in 0 auto; do
        COMFYRS_WIDEN_PAGE_LOCKED_BASES=$p TAILN=12 run "loop12GiB-page-locked-$p" "$B" bench loop --repeat 3 --dir $D --device-memory 12GiB
      done
      if [ -x /tmp/comfyrs-before ]; then
        TAILN=12 run loop12GiB-before /tmp/comfyrs-before bench loop --repeat 3 --dir $D --device-memory 12GiB
      fi
      ;;
    profile12)
      python_log
      TAILN=6 run loop12GiB-v "$B" -v bench loop --repeat 2 --dir $D --device-memory 12GiB
      TAILN=6 run merge12-v "$B" -v bench merge --hold-base --repeat 2 --workloads w2 --dir $D --device-memory 12GiB
      TAILN=6 run merge-v "$B" -v bench merge --hold-base --repeat 2 --workloads w2 --dir $D
      ;;
    reference)
      TAILN=45 run loopref $B bench loop --repeat 3 --dir $D --reference "$here/gpupack" --reference-python /opt/torch/.venv/bin/python3
      ;;
    *)
      echo "unknown measurement set '$set': use loop12, loop24, merge12, products12, pagelocked12, profile12 or reference" >&2
      exit 2
      ;;
  esac
done
