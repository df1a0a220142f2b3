#!/usr/bin/env bash
# Keeps room on the disk of the cache folder before a build and the tests (called by setup.sh).
#
#   scripts/cache-room.sh CACHE VENV TARGET
#
# The cache outlives clones, and it grows with each: cargo keys a workspace crate's artifacts by
# the clone's path, so every checkout in a new place adds its own copy of each test binary, and
# rustc's incremental folders pile up beside them. A build or a test that meets a full disk fails
# far from the cause ("No space left on device" in whichever test wrote next). So when less than
# COMFYRS_CACHE_ROOM_GIB GiB are free (default 20: about what a build of a clone in a new place
# adds), this removes, in order and until there is room, what is rebuilt on demand: venvs of older
# requirements, the tests' scratch folder (its fixture models are written again), rustc's
# incremental folders, then the cargo target folders of this cache (the next build is a cold one,
# about 15 minutes on two cores). The venv in use, the fixture models and anything outside the
# cache are never touched.
set -euo pipefail
cache=${1:?usage: scripts/cache-room.sh CACHE VENV TARGET}
venv=${2:?usage: scripts/cache-room.sh CACHE VENV TARGET}
target=${3:?usage: scripts/cache-room.sh CACHE VENV TARGET}
need=${COMFYRS_CACHE_ROOM_GIB:-20}
case $need in '' | *[!0-9]*)
  echo "setup: COMFYRS_CACHE_ROOM_GIB='$need' is not a whole number of GiB (e.g. 20)" >&2
  exit 2 ;;
esac

free_gib() { df -Pk "$cache" | awk 'NR == 2 { print int($4 / 1048576) }'; }
enough() { [ "$(free_gib)" -ge "$need" ]; }
enough && exit 0

echo "setup: only $(free_gib) GiB free on the disk of $cache (want $need, COMFYRS_CACHE_ROOM_GIB);" \
  "removing what the build and the tests make again" >&2
# remove WHAT PATH...: the paths that exist, with one line saying what went and how much.
remove() {
  local what=$1; shift
  local found=()
  for p in "$@"; do [ -e "$p" ] && found+=("$p"); done
  [ ${#found[@]} -gt 0 ] || return 0
  local size
  size=$(du -sch "${found[@]}" 2>/dev/null | tail -1 | cut -f1)
  rm -rf "${found[@]}"
  echo "setup: removed $what ($size); $(free_gib) GiB free now" >&2
}

old_venvs=()
for v in "$cache"/venv-*; do
  [ -d "$v" ] && [ "$(cd "$v" && pwd)" != "$(cd "$venv" && pwd)" ] && old_venvs+=("$v")
done
remove "venvs of older requirements" "${old_venvs[@]+"${old_venvs[@]}"}"
enough && exit 0
remove "the tests' scratch folder" "$target/tmp"
enough && exit 0
remove "rustc's incremental folders" "$target"/*/incremental "$cache"/target-*/*/incremental
enough && exit 0
remove "the cargo target folders (the next build is a cold one)" "$target" "$cache"/target-*
enough && exit 0
echo "setup: WARNING: still only $(free_gib) GiB free on the disk of $cache; the build and the tests" \
  "may fail with 'No space left on device'. The biggest folders there:" >&2
du -sh "$cache"/* 2>/dev/null | sort -rh | head -5 | sed 's/^/setup:   /' >&2
