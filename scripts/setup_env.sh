# Sourced by demo.sh and test.sh: a virtual environment with the pinned CPU torch and this package.
# TORCH_SPEC overrides the torch requirement (e.g. a CUDA build on a GPU machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "error: Python >= 3.10 is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=python3.x" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[train,dev]"

# A Debian package, when root (or sudo) can install it.
apt_install() {
  command -v apt-get >/dev/null || return 1
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || return 1
    sudo="sudo"
  fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Fashion-MNIST from Debian's package, unless another copy is there.
install_fashion_mnist() {
  [ -d /usr/share/datasets/fashion-mnist ] && return 0
  apt_install dataset-fashion-mnist
}

# Headless Chromium: the HTML report is tested in a real browser.
install_chromium() {
  command -v chromium >/dev/null && return 0
  apt_install chromium
}
