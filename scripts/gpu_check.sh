#!/usr/bin/env bash
# The GPU check: training memory (MimicNorm vs BN vs BN-revisited, fp32/fp16/bf16, the paper's
# settings), a short fp16 training run, NCCL DDP under torchrun, torch-backend inference (FP32,
# FP16, CUDA graphs) and the CUDA half of the TensorRT runner, in under 8 minutes on one GPU.
#
#   scripts/gpu_check.sh OUT_DIR [--dry-run] [--budget-s 400] [--parts environment,train_memory,...]
#
# Results: OUT_DIR/gpu_check.json, gpu_check.md, gpu_check.log. No network; needs torch, numpy and
# safetensors in $PYTHON (default: the repo's .venv if there is one, else python3). --dry-run runs
# every part on the CPU at toy sizes (the plumbing, not the CUDA paths). See scripts/gpu_check.py.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
