"""Everything that imports torch: layers, model families, data loading, the trainer, checkpoints,
freezing, ONNX export, training-memory profiling and distributed set-up.

Nothing outside this folder may import torch at module level: the rest of the package (CLI, stages,
pipeline, reports) and the `calibration` and `engines` packages run on a Jetson without it.
tests/test_cli.py enforces the boundary by folder.
"""
