"""What an engine consumes (precision plan JSON, TensorRT calibration cache + sidecar, image sets,
engine manifests) reads with numpy alone: the TensorRT backend on a Jetson has no calibration,
onnx, onnxruntime or torch to lean on. Checked in a process where those cannot be imported."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from tiny_onnx import make_tiny_resnet, random_images

from calibration.plan import plan_precision
from calibration.ranges import calibrate_ranges
from engines.artifacts import save_image_set
from engines.precision_plan import Gate
from engines.trt_cache import write_model_calibration_cache

REPO = Path(__file__).resolve().parent.parent
BLOCKED = ("calibration", "onnx", "onnxruntime", "torch")

_READER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: engines must read its inputs without it")
sys.meta_path.insert(0, Block())
from engines.artifacts import load_image_set
from engines.precision_plan import PrecisionPlan
from engines.trt_cache import load_model_calibration_cache
header, scales = load_model_calibration_cache({cache!r}, {model!r})
plan = PrecisionPlan.load({plan!r})
images, labels = load_image_set({images!r})
print(header.line, len(scales), len(plan.layers), images.shape[0])
"""


def test_engine_inputs_read_without_calibration_onnxruntime_or_torch(tmp_path):
    model = make_tiny_resnet(tmp_path / "model.onnx")
    images = random_images(24)
    ranges = calibrate_ranges(model, images[:16], "minmax", batch_size=8)
    plan = plan_precision(model, ranges, images[16:], Gate(min_logits_sqnr_db=-100.0))
    plan_path = plan.save(tmp_path / "model.plan.json")
    cache = write_model_calibration_cache(tmp_path / "model.calib", ranges)
    image_set = save_image_set(tmp_path / "images.npz", (images * 255).astype(np.uint8), None, 1 / 255)
    script = _READER.format(blocked=BLOCKED, cache=str(cache), model=str(model), plan=str(plan_path),
                            images=str(image_set))  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TRT-100300-EntropyCalibration2", str(len(ranges.amax)), str(len(plan.layers)),
                                     "24"]  # fmt: skip
