#!/usr/bin/env bash
# Builds a Python Sluice policy into a WebAssembly component.
#
#   sdk/python/build.sh WORLD APP_DIR OUT.wasm
#
# WORLD is a world of wit/policy.wit (authz, health, routing, request); APP_DIR holds `app.py`
# (a class `WitWorld` implementing the world); the SDK (`sluice_policy`) is on the module path.
# Uses the componentize-py that scripts/setup.sh installs (pinned in requirements.txt), or
# $COMPONENTIZE_PY, or one on PATH of the pinned version.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 WORLD APP_DIR OUT.wasm" >&2
  exit 2
fi
world=$1 app_dir=$2 out=$3
sdk_dir=$(cd "$(dirname "$0")" && pwd)
wit_dir="$sdk_dir/../../wit"
pinned=$(sed -n 's/^componentize-py==\(.*\)$/\1/p' "$sdk_dir/requirements.txt")
venv="${XDG_DATA_HOME:-$HOME/.local/share}/sluice/componentize-py"

tool=${COMPONENTIZE_PY:-}
if [ -z "$tool" ]; then
  if [ -x "$venv/bin/componentize-py" ]; then
    tool="$venv/bin/componentize-py"
  else
    tool=$(command -v componentize-py || true)
  fi
fi
if [ -z "$tool" ]; then
  echo "componentize-py is not installed: run scripts/setup.sh (or: pip install componentize-py==$pinned)" >&2
  exit 1
fi
version=$("$tool" --version | awk '{print $2}')
if [ "$version" != "$pinned" ]; then
  echo "$tool is componentize-py $version, this SDK is tested with $pinned: run scripts/setup.sh (or: pip install componentize-py==$pinned)" >&2
  exit 1
fi
if [ ! -f "$app_dir/app.py" ]; then
  echo "$app_dir/app.py not found (the policy's module must be named app)" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
# -p: the app's folder first, then the SDK. -q: only errors (a Python syntax error, an import
# missing from the bundled standard library, a world the app does not implement).
"$tool" -q -d "$wit_dir" -w "$world" componentize -p "$app_dir" -p "$sdk_dir" app -o "$out"
