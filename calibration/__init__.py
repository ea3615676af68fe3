"""Calibration and INT8 quantization (numpy + onnx + onnxruntime; never torch).

- `data`: calibration data readers for ONNX Runtime's calibrators.
- `quantize`: FP32 ONNX -> symmetric INT8 Q/DQ ONNX that TensorRT and ONNX Runtime both run.
- `qdq`: inspection of Q/DQ graphs (zero-point checks, counts).
- `metrics`: SQNR, top-1 agreement, accuracy, per-layer weight-range spread.
- `trt_cache`: TensorRT 10 calibration cache writer and reader.
"""
