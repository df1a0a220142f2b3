#!/usr/bin/env bash
# Sets up a fresh machine for building and testing comfyrs. Idempotent and quick when cached.
#
# - The Python venv (torch 2.11 for libtorch) lives in a cache folder outside the clone
#   ($COMFYRS_CACHE, default ~/.cache/comfyrs), keyed by the requirements' hash, and is linked
#   into the checkout as .venv.
# - Room on that cache's disk: scripts/cache-room.sh removes what is made again on demand (older
#   venvs, test scratch, incremental and target folders) when too little is free.
# - .cargo/config.toml is generated (it holds this machine's absolute paths, so it is not
#   committed) and points tch at the venv's libtorch and pyo3 at the venv's python.
# - `comfyrs serve`'s web frontend (comfyui-frontend-package) goes into the venv, and Debian's
#   chromium + chromium-driver (for the browser test), redis-server (for the broker tests) and
#   fonts-dejavu-core (for the merge report's picture) are installed with apt-get when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${COMFYRS_CACHE:-$HOME/.cache/comfyrs}
mkdir -p "$cache"

python=${PYTHON:-python3}
req=scripts/requirements.txt
key=$(cat "$req" | sha256sum | cut -c1-12)
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "setup: creating the Python venv in $venv (torch is ~4.6 GB; a minute or two)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
bash scripts/cache-room.sh "$cache" "$venv" "${CARGO_TARGET_DIR:-$cache/target}"

# ComfyUI for the Python bridge, into the same venv, with its own completion marker keyed by
# its requirements file (so changing it never recreates the torch venv).
creq=scripts/requirements-comfyui.txt
ckey=$(cat "$creq" | sha256sum | cut -c1-12)
if [ ! -f "$venv/.comfyui-$ckey" ]; then
  echo "setup: installing ComfyUI and its dependencies into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$creq"
  nodeps=$(sed -n 's/^# no-deps: *//p' "$creq")
  if [ -n "$nodeps" ]; then
    # shellcheck disable=SC2086
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps $nodeps
  fi
  rm -f "$venv"/.comfyui-*
  touch "$venv/.comfyui-$ckey"
fi

# The web frontend and the websocket client of ComfyUI's script example, into the same venv.
wreq=scripts/requirements-web.txt
wkey=$(cat "$wreq" | sha256sum | cut -c1-12)
if [ ! -f "$venv/.web-$wkey" ]; then
  echo "setup: installing the web frontend (comfyui-frontend-package) into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$wreq"
  rm -f "$venv"/.web-*
  touch "$venv/.web-$wkey"
fi

# A user's ComfyUI (COMFYUI_PATH): its own requirements into the same venv, except torch and its
# companions (pinned: tch links that torch) and what comfyrs serves itself (the web frontend,
# its templates and docs). Keyed by that file's hash, so a pull that changes it reinstalls.
if [ -n "${COMFYUI_PATH:-}" ]; then
  ureq="$COMFYUI_PATH/requirements.txt"
  if [ ! -f "$ureq" ]; then
    echo "setup: WARNING: COMFYUI_PATH=$COMFYUI_PATH has no requirements.txt; is it a ComfyUI checkout?" >&2
  else
    ukey=$(cat "$ureq" "$req" | sha256sum | cut -c1-12)
    if [ ! -f "$venv/.comfyui-path-$ukey" ]; then
      echo "setup: installing the requirements of the ComfyUI in $COMFYUI_PATH into $venv" >&2
      tmp=$(mktemp -d)
      grep -v -i -E '^[[:space:]]*(torch|torchvision|comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)([^a-z0-9_.-]|$)' "$ureq" > "$tmp/requirements.txt"
      "$venv/bin/python" - > "$tmp/constraints.txt" <<'PY'
from importlib.metadata import version
t = version("torch")
# torchaudio is released in step with torch, under the same version number.
print(f"torch=={t}\ntorchaudio=={t}\ntorchvision=={version('torchvision')}")
PY
      "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$tmp/requirements.txt" -c "$tmp/constraints.txt"
      rm -rf "$tmp"
      rm -f "$venv"/.comfyui-path-*
      touch "$venv/.comfyui-path-$ukey"
    fi
  fi
fi

# Debian's chromium and its WebDriver for the browser test (tests/browser.rs). Needs root and
# apt-get; anything else only warns, since everything but that one test works without them.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium and chromium-driver from Debian (for tests/browser.rs)" >&2
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
    # A fresh machine has no package lists yet: update once and retry.
    apt_install || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && apt_install; } \
      || echo "setup: WARNING: apt-get could not install chromium and chromium-driver; tests/browser.rs will fail until they are installed" >&2
  else
    echo "setup: WARNING: chromium and chromedriver are missing and cannot be installed here (needs apt-get as root);" \
      "install Debian's chromium and chromium-driver (or put chromium and chromedriver on PATH) for tests/browser.rs" >&2
  fi
fi

# Debian's redis-server for the scale-out tests (a real Redis on a free loopback port each; the
# package's own service is not used). Same rules as chromium above.
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing redis-server from Debian (for the broker tests)" >&2
    apt_redis() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null; }
    apt_redis || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && apt_redis; } \
      || echo "setup: WARNING: apt-get could not install redis-server; the broker tests will fail until it is installed" >&2
  else
    echo "setup: WARNING: redis-server is missing and cannot be installed here (needs apt-get as root);" \
      "install Debian's redis-server (or put redis-server on PATH) for the broker tests" >&2
  fi
fi

# Debian's DejaVu fonts for the text of the WIDEN merge report's picture (docs/widen.md,
# "Report"; read at run time, no font is committed). Same rules as chromium above.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing fonts-dejavu-core from Debian (for the merge report's picture)" >&2
    apt_fonts() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fonts-dejavu-core >/dev/null; }
    apt_fonts || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && apt_fonts; } \
      || echo "setup: WARNING: apt-get could not install fonts-dejavu-core; the merge report cannot draw its picture until it is installed" >&2
  else
    echo "setup: WARNING: fonts-dejavu-core is missing and cannot be installed here (needs apt-get as root);" \
      "install Debian's fonts-dejavu-core for the merge report's picture" >&2
  fi
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .cargo
cat > .cargo/config.toml <<CFG
# Generated by scripts/setup.sh for this machine; not committed.
[env]
LIBTORCH = "$site/torch"
LIBTORCH_CXX11_ABI = "1"
PYO3_PYTHON = "$venv/bin/python"
COMFYRS_VENV = "$venv"

[build]
target-dir = "${CARGO_TARGET_DIR:-$cache/target}"
CFG
echo "setup: ready (venv $venv, cargo target ${CARGO_TARGET_DIR:-$cache/target})" >&2
