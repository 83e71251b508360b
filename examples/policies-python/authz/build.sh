#!/usr/bin/env bash
# Builds this policy: examples/policies-python/authz/build.sh [OUT.wasm] (default: policy.wasm here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../../sdk/python/build.sh" authz "$here" "${1:-$here/policy.wasm}"
