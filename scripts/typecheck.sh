#!/usr/bin/env bash
# Type-check engines/tensorrt/ with mypy against NVIDIA's TensorRT Python API as published in
# tensorrt-stubs (pybind11-generated; https://pypi.org/project/tensorrt-stubs/).
# - installed with --no-deps into a throwaway directory: their dependency is the `tensorrt`
#   package itself, which needs a GPU stack;
# - repaired mechanically (scripts/repair_tensorrt_stubs.py: a parameter named `in`, a
#   non-default parameter after a default one) into $TENSORRT_STUBS_DIR, where
#   tests/test_fake_tensorrt.py also reads them;
# - passed to mypy on MYPYPATH, since they ship no py.typed marker.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-${VENV:-$ROOT/.venv}/bin/python}"
STUBS_VERSION="${TENSORRT_STUBS_VERSION:-10.13.0.35.1}"
export TENSORRT_STUBS_DIR="${TENSORRT_STUBS_DIR:-$ROOT/.cache/tensorrt-stubs}"

download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
"$PYTHON" -m pip install --quiet --no-deps --target "$download" "tensorrt-stubs==$STUBS_VERSION"
rm -rf "$TENSORRT_STUBS_DIR"
"$PYTHON" "$ROOT/scripts/repair_tensorrt_stubs.py" "$download" "$TENSORRT_STUBS_DIR" >/dev/null
cd "$ROOT"
MYPYPATH="$TENSORRT_STUBS_DIR" "$PYTHON" -m mypy engines/tensorrt/
