#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then pytest. GPU and TensorRT tests skip where absent.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
# The real-data tests need Fashion-MNIST; without it they skip (and say so).
install_fashion_mnist || echo "warning: dataset-fashion-mnist not installed; real-data tests will skip" >&2
# The HTML report's test opens it in headless Chromium; without it that test skips (and says so).
install_chromium || echo "warning: chromium not installed; the HTML report's browser test will skip" >&2
cd "$ROOT"
"$VENV/bin/ruff" check .
# engines/tensorrt/ against NVIDIA's published TensorRT API; also leaves the repaired stubs where
# tests/test_fake_tensorrt.py checks the fake against them.
PYTHON="$VENV/bin/python" "$ROOT/scripts/typecheck.sh"
status=0
"$VENV/bin/python" -m pytest -q -ra "$@" || status=$?
# pytest exits 5 when it collected no test: for this suite that is a failure, not a pass.
if [ "$status" = 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$status"
