"""Calibration and INT8/FP16 quantization (numpy + onnx + onnxruntime; never torch).

- `data`: calibration data readers for ONNX Runtime's calibrators.
- `inputs`: checks on the FP32 model and calibration images given to calibration.
- `thresholds`: amax from a histogram of |x|: percentile, MSE, TensorRT's EntropyCalibration2.
- `ranges`: per-tensor activation ranges of a model on calibration images (MinMax, percentile, mse, entropy).
- `equalize`: cross-layer equalization of conv -> Relu -> conv pairs (exact in FP32), before per-tensor INT8.
- `quantize`: FP32 ONNX -> symmetric INT8 Q/DQ ONNX that TensorRT and ONNX Runtime both run.
- `fp16`: pure FP16 ONNX (and FP16 around Q/DQ), refusing constants or activations beyond FP16's range.
- `plan`: per-layer sensitivity, accuracy-gated INT8/high-precision plans and their writer.
- `qdq`: inspection of Q/DQ graphs (zero-point checks, counts).
- `metrics`: SQNR, top-1 agreement, accuracy, per-layer weight-range spread.
"""
