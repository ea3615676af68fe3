"""FAKE TensorRT in every Python process of a device-script test: when MIMICNORM_FAKE_TENSORRT names a
TensorRT version, tests/fake_tensorrt.py (the recording fake that runs engines with ONNX Runtime on the
CPU) is installed as `tensorrt` and `cuda.bindings.runtime`, with a fake Jetson Orin GPU. Put this
directory and tests/ on PYTHONPATH; nothing happens without the variable."""

import os

if os.environ.get("MIMICNORM_FAKE_TENSORRT"):
    import pytest
    from fake_tensorrt import FakeGpu, install

    install(pytest.MonkeyPatch(), os.environ["MIMICNORM_FAKE_TENSORRT"],
            FakeGpu(name="Orin", compute_capability=(8, 7), num_dla_cores=2))
