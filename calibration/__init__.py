"""Calibration and INT8/FP16 quantization (numpy + onnx + onnxruntime; never torch).

- `data`: calibration data readers for ONNX Runtime's calibrators.
- `inputs`: checks on the FP32 model and calibration images given to calibration.
- `thresholds`: amax from a histogram of |x|: percentile, MSE, TensorRT's EntropyCalibration2.
- `ranges`: per-tensor activation ranges of a model on calibration images (MinMax, percentile, mse, entropy).
- `equalize`: cross-layer equalization of conv -> Relu -> conv pairs (exact in FP32), before per-tensor INT8.
- `quantize`: FP32 ONNX -> symmetric INT8 Q/DQ ONNX that TensorRT and ONNX Runtime both run.
- `fp16`: pure FP16 ONNX (and FP16 around Q/DQ), refusing constants or activations beyond FP16's range.
- `plan`: per-layer sensitivity, accuracy-gated INT8/high-precision plans and their writer.
- `qdq`: inspection of Q/DQ graphs (quantizable layers, zero-point and placement checks, dangling pairs).
- `metrics`: SQNR, top-1 agreement, accuracy, per-layer weight-range spread.
- `quality`: the quality report of a calibrated model against FP32 (per layer and at the logits), Markdown + PNG.
- `targets`: the INT8 encoding of each target (engines/targets.py): activations, 7-bit weights, Q/DQ placement.

What engines read (the precision plan JSON, the TensorRT calibration cache) lives in
engines/precision_plan.py and engines/trt_cache.py; calibration writes through them.
"""
