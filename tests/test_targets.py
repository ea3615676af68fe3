"""The target registry: one name per target, each naming its backend and INT8 encoding."""

import pytest

from calibration.targets import encoding_for
from engines.cpu import CpuFeatures
from engines.errors import UserError
from engines.targets import DEFAULT_TARGET, INT8_ENCODINGS, TARGETS, get_target, parse_tensorrt_version


def test_every_target_is_consistent():
    assert DEFAULT_TARGET in TARGETS
    for name, target in TARGETS.items():
        assert target.name == name
        # Only the torch reference runs no INT8.
        assert target.int8_encoding in INT8_ENCODINGS or (target.int8_encoding is None and target.backend == "torch")
        assert (target.device == "dla") == (target.dla_core is not None) == name.endswith(("-dla0", "-dla1"))
        if target.backend == "tensorrt":
            assert target.default_tensorrt_version is not None
            parse_tensorrt_version(target.default_tensorrt_version)


def test_jetson_orin_nano_has_no_dla_and_the_smallest_workspace():
    assert not any(name.startswith("jetson-orin-nano-dla") for name in TARGETS)
    caps = {name: TARGETS[name].workspace_mib for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-orin-agx")}
    assert caps["jetson-orin-nano"] < caps["jetson-orin-nx"] < caps["jetson-orin-agx"]
    assert get_target("jetson-orin-agx-dla1").dla_core == 1


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(UserError, match="choose one of: cpu, desktop-gpu"):
        get_target("ort-cpu")


@pytest.mark.parametrize("text,version", [("10.3", (10, 3, 0)), ("10.13.1", (10, 13, 1)), ("11", (11, 0, 0))])
def test_tensorrt_versions_parse(text, version):
    assert parse_tensorrt_version(text) == version


@pytest.mark.parametrize("text", ["", "ten", "10.x", "1.2.3.4", "-1"])
def test_bad_tensorrt_versions_are_one_line_errors(text):
    with pytest.raises(UserError, match="MAJOR.MINOR"):
        parse_tensorrt_version(text)


def test_encodings_follow_the_target():
    no_vnni = CpuFeatures("x86_64", "test cpu", ("avx2",))
    cpu = encoding_for("cpu", no_vnni)
    expected = ("uint8", True, "onnxruntime", "fp32")
    assert (cpu.activations, cpu.reduce_range, cpu.placement, cpu.high_precision) == expected
    for name in ("desktop-gpu", "jetson-orin-nx-dla0"):
        trt = encoding_for(name, no_vnni)
        assert (trt.activations, trt.reduce_range, trt.placement, trt.high_precision) == (
            "int8-symmetric", False, "tensorrt", "fp16")


def test_a_target_without_int8_is_not_calibrated_for():
    with pytest.raises(UserError, match="target 'torch-cpu' runs no INT8 .*calibrate for cpu or a TensorRT target"):
        encoding_for("torch-cpu")


def test_targets_command_lists_every_target_with_its_backend_and_limits(capsys):
    from mimicnorm_deploy.cli import main

    assert main(["targets"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(rows) == list(TARGETS)
    assert rows["cpu"][1:5] == ["onnxruntime", "cpu", "onnxruntime", "-"]
    assert rows["jetson-orin-nano"][1:6] == ["tensorrt", "gpu", "tensorrt", "512", "MiB"]
    assert "10.3.0," in rows["jetson-orin-nx-dla0"] and rows["jetson-orin-nx-dla0"][2] == "dla"
