#!/usr/bin/env bash
# The main job on a fresh machine: set up, then train MimicNorm MobileNetV2-0.5 and its BN twin on
# Fashion-MNIST, freeze, export, calibrate to INT8, build ONNX Runtime engines, bench, report.
# Extra arguments go to `mimicnorm-deploy demo` (e.g. --data-dir DIR, --arch resnet20, --out DIR).
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
case " $* " in
  *" --data-dir "*) ;;
  *) install_fashion_mnist || echo "warning: could not install dataset-fashion-mnist; pass --data-dir DIR" >&2 ;;
esac
cd "$ROOT"
exec "$VENV/bin/mimicnorm-deploy" demo --out runs/demo "$@"
