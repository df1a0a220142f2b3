#!/usr/bin/env bash
# ComfyUI's own execution test suite (tests/execution of a ComfyUI checkout, with its testing_nodes
# pack as custom nodes) against `comfyrs serve`, the tests unchanged: only `python main.py` is
# replaced, by tests/comfyui-suite/launcher.py, which maps main.py's flags to comfyrs's.
#
#   scripts/comfyui-suite.sh [COMFYUI_DIR] [COMFYRS_BIN] [PYTEST_ARGS...]
#
# COMFYUI_DIR defaults to $COMFYUI_PATH, COMFYRS_BIN to the debug build in cargo's target dir
# (the release one with COMFYRS_PROFILE=release; an empty argument also means the default).
# PYTEST_ARGS (e.g. `-k lazy`, or test paths such as tests/execution/test_jobs.py instead of the
# whole tests/execution) go to pytest.
# Installs nothing: pytest and websocket-client come from scripts/requirements-web.txt (setup.sh).
#
# A staging folder under a temp dir stands in for the checkout: every top-level entry is a symlink
# to the real one except main.py (the launcher) and tests/ (a copy, so pytest and the tests may
# write there; the checkout may be read-only). Nothing is written into COMFYUI_DIR.
#
# Prints tests/comfyui-suite/EXPECTED.md (the known failures and their causes) and exits non-zero
# when a test not listed there fails, or a listed one passes (so the list stays honest).
set -euo pipefail

# All in one function, so bash has read the whole script before it runs (an edit to this file
# during a run cannot break it).
main() {

  repo=$(cd "$(dirname "$0")/.." && pwd)
  comfy=${1:-${COMFYUI_PATH:-}}
  bin=${2:-}
  shift $(( $# < 2 ? $# : 2 ))

  if [ -z "$comfy" ] || [ ! -f "$comfy/main.py" ] || [ ! -d "$comfy/tests/execution" ]; then
    echo "comfyui-suite: give a ComfyUI checkout with tests/execution (first argument or COMFYUI_PATH); got '${comfy}'" >&2
    exit 2
  fi
  comfy=$(cd "$comfy" && pwd)

  venv=${COMFYRS_VENV:-}
  if [ -z "$venv" ] && [ -f "$repo/.cargo/config.toml" ]; then
    venv=$(sed -n 's/^COMFYRS_VENV *= *"\(.*\)"/\1/p' "$repo/.cargo/config.toml")
  fi
  if [ -z "$venv" ] || [ ! -x "$venv/bin/python" ]; then
    echo "comfyui-suite: no project venv found; run scripts/setup.sh (or set COMFYRS_VENV)" >&2
    exit 2
  fi
  if ! "$venv/bin/python" -c 'import pytest, websocket' 2>/dev/null; then
    echo "comfyui-suite: pytest or websocket-client missing in $venv; run scripts/setup.sh" >&2
    exit 2
  fi

  if [ -z "$bin" ]; then
    target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
      | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    bin=$target/${COMFYRS_PROFILE:-debug}/comfyrs
  fi
  if [ ! -x "$bin" ]; then
    echo "comfyui-suite: comfyrs binary $bin not found; build it (cargo build) or pass its path" >&2
    exit 2
  fi
  bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

  work=$(mktemp -d -t comfyui-suite.XXXXXX)
  # The tests kill each server they start; one a failed run leaves behind (the launcher and its
  # comfyrs, both with $work in their command lines) is stopped here.
  cleanup() {
    for pidfile in "$work"/state/*/*.pid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      # Only a process still running with this run's state dir (a pid may have been reused).
      if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF "$work/"; then kill "$pid"; fi
    done
    rm -rf "$work"
  }
  trap cleanup EXIT

  stage=$work/comfyui
  mkdir -p "$stage" "$work/state" "$work/output"
  for entry in "$comfy"/* "$comfy"/.[!.]*; do
    name=$(basename "$entry")
    case "$name" in
      main.py|tests|'.[!.]*') ;;
      *) ln -s "$entry" "$stage/$name" ;;
    esac
  done
  cp -R "$comfy/tests" "$stage/tests"
  chmod -R u+w "$stage/tests"
  cp "$repo/tests/comfyui-suite/launcher.py" "$stage/main.py"

  # A free port, so the suite can run beside another server (ComfyUI's default 8188 often is taken).
  port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

  export PATH="$venv/bin:$PATH"          # the tests run `python main.py`
  export COMFYRS_BIN=$bin COMFYUI_PATH=$comfy COMFYRS_SUITE_STATE=$work/state
  export PYTHONDONTWRITEBYTECODE=1

  echo "comfyui-suite: $comfy against $bin (port $port, staging $stage)" >&2
  # The whole suite unless PYTEST_ARGS name test paths themselves.
  paths=(tests/execution)
  for a in "$@"; do case "$a" in tests/*) paths=() ;; esac; done
  start=$(date +%s)
  set +e
  (cd "$stage" && python -m pytest "${paths[@]}" -v --skip-timing-checks -p no:cacheprovider \
    --port "$port" --output_dir "$work/output" --junitxml "$work/junit.xml" \
    --durations=0 "$@")
  pytest_rc=$?
  set -e
  echo "comfyui-suite: pytest exited $pytest_rc after $(( $(date +%s) - start )) s" >&2

  echo
  cat "$repo/tests/comfyui-suite/EXPECTED.md"
  # 0: all passed, 1: some failed; anything else (interrupted, internal error, usage error, nothing
  # collected) means the results are incomplete, whatever the list says.
  if [ "$pytest_rc" -gt 1 ] || [ ! -f "$work/junit.xml" ]; then
    echo "comfyui-suite: pytest did not complete the run (exit $pytest_rc)" >&2
    exit 1
  fi
  if [ -n "${COMFYUI_SUITE_JUNIT:-}" ]; then cp "$work/junit.xml" "$COMFYUI_SUITE_JUNIT"; fi
  python "$repo/tests/comfyui-suite/compare.py" "$work/junit.xml" "$repo/tests/comfyui-suite/EXPECTED.md"
}

main "$@"
