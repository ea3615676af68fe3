#!/usr/bin/env bash
# Set up mimicnorm-deploy on a Jetson: check the L4T release, JetPack's TensorRT and Python, then make a
# venv that sees JetPack's system packages (tensorrt lives in the system Python, not on PyPI for aarch64)
# and install the base package into it (no torch: engines, calibration artifacts and reports only).
#
#   bash scripts/jetson/setup.sh           # checks, then .venv-jetson/ in the repository
#   bash scripts/jetson/setup.sh --check   # checks only
#
# Environment: NV_TEGRA_RELEASE (default /etc/nv_tegra_release), PYTHON (default python3),
# VENV (default <repo>/.venv-jetson), PACKAGE (what pip installs; default this checkout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NV_TEGRA_RELEASE="${NV_TEGRA_RELEASE:-/etc/nv_tegra_release}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv-jetson}"
PACKAGE="${PACKAGE:-$ROOT}"
MIN_L4T_MAJOR=36      # JetPack 6 (TensorRT 10.3) and later; JetPack 5 ships TensorRT 8, which this toolkit does not target
MIN_TENSORRT_MAJOR=10
MIN_PYTHON="3.10"

fail() { echo "error: $*" >&2; exit 2; }

# "# R36 (release), REVISION: 4.3, GCID: ..." -> "36.4.3"
l4t_release() {
  local first major revision
  [ -r "$NV_TEGRA_RELEASE" ] || fail "$NV_TEGRA_RELEASE not found: this is not a Jetson (L4T); run setup.sh on the device"
  first="$(head -n 1 "$NV_TEGRA_RELEASE")"
  major="$(sed -n 's/^# R\([0-9][0-9]*\) .*/\1/p' <<<"$first")"
  revision="$(sed -n 's/.*REVISION: \([0-9.][0-9.]*\).*/\1/p' <<<"$first")"
  [ -n "$major" ] && [ -n "$revision" ] || fail "$NV_TEGRA_RELEASE: unexpected first line '$first'; is this JetPack's L4T?"
  echo "$major.$revision"
}

main() {
  local check_only=0
  case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *) fail "unknown option '$1'; usage: setup.sh [--check]" ;;
  esac

  local l4t
  l4t="$(l4t_release)"
  [ "${l4t%%.*}" -ge "$MIN_L4T_MAJOR" ] \
    || fail "L4T $l4t is JetPack 5 or older (TensorRT 8); flash JetPack 6 or later (L4T R$MIN_L4T_MAJOR+)"

  command -v "$PYTHON" >/dev/null || fail "$PYTHON not found; install JetPack's python3"
  local python_version
  python_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  "$PYTHON" -c "import sys; sys.exit(sys.version_info[:2] < tuple(map(int, '$MIN_PYTHON'.split('.'))))" \
    || fail "Python $python_version is older than $MIN_PYTHON; use JetPack 6's python3"

  local tensorrt_version
  tensorrt_version="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)" \
    || fail "TensorRT's Python bindings are missing; install them: sudo apt-get install python3-libnvinfer"
  [ "${tensorrt_version%%.*}" -ge "$MIN_TENSORRT_MAJOR" ] \
    || fail "TensorRT $tensorrt_version is older than $MIN_TENSORRT_MAJOR.0; upgrade JetPack"

  echo "L4T $l4t, TensorRT $tensorrt_version, Python $python_version"
  [ "$check_only" = 1 ] && return 0
  [ "$PACKAGE" != "$ROOT" ] || [ -f "$ROOT/pyproject.toml" ] \
    || fail "$ROOT is not a checkout of mimicnorm-deploy (a bundle's copy of this script?); run it from a checkout"

  # --system-site-packages: the venv must see JetPack's tensorrt module, which pip cannot install here.
  "$PYTHON" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install --upgrade pip
  # the base install: numpy, onnx, onnxruntime, matplotlib
  if [ "$PACKAGE" = "$ROOT" ]; then
    "$VENV/bin/python" -m pip install -e "$ROOT"
  else
    "$VENV/bin/python" -m pip install "$PACKAGE"
  fi
  "$VENV/bin/python" -c 'import tensorrt' || fail "$VENV does not see TensorRT; recreate it with --system-site-packages"
  echo "ready: source $VENV/bin/activate; then bash scripts/jetson/run.sh BUNDLE"
}

main "$@"
