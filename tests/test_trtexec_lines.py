"""trtexec command lines, pinned per TensorRT version and artifact kind (flags from trtexec's sampleOptions.cpp)."""

import shlex
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.artifacts import write_json
from engines.errors import UserError
from engines.schemas import PRECISION_PLAN
from engines.targets import get_target
from engines.tensorrt.trtexec import render_script, trtexec_lines
from mimicnorm_deploy.cli import main


def _model(path, *, kind="fp32", batch="batch"):
    """images [batch, 1, 8, 8] -> one Conv (-> Q/DQ pair before it for "qdq"); FP16 weights for "fp16"."""
    dtype = np.float16 if kind == "fp16" else np.float32
    elem = TensorProto.FLOAT16 if kind == "fp16" else TensorProto.FLOAT
    nodes, conv_input = [], "images"
    inits = [numpy_helper.from_array(np.ones((2, 1, 3, 3), dtype), "w")]
    if kind == "qdq":
        inits += [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"], name="q"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq")]  # fmt: skip
        conv_input = "dq"
    nodes.append(helper.make_node("Conv", [conv_input, "w"], ["logits"], name="/conv/Conv"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", elem, [batch, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", elem, [batch, 2, 6, 6])], inits)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    return path


def _plan(path, layers):
    write_json(path, *PRECISION_PLAN, {"layers": layers})
    return path


OUT = "/dev/e"  # a fixed output directory keeps the pinned lines readable


def _line(model, target, version, **kwargs):
    lines = trtexec_lines(model, get_target(target), OUT, trt_version=version, **kwargs)
    return [" ".join(line).replace(str(model), "M") for line in lines]


COMMON_TAIL = "--timingCacheFile=/dev/e/timing.cache --profilingVerbosity=detailed --warmUp=500 --duration=2"
SHAPES_B1 = ("--minShapes=images:1x1x8x8 --optShapes=images:1x1x8x8 --maxShapes=images:1x1x8x8 "
             "--shapes=images:1x1x8x8")  # fmt: skip
EXPORTS_B1 = ("--saveEngine=/dev/e/b1.plan --exportTimes=/dev/e/b1.times.json --exportProfile=/dev/e/b1.profile.json "
              "--exportLayerInfo=/dev/e/b1.layers.json")  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "target", "version", "flags"),
    [
        ("fp32", "jetson-orin-nx", "10.3", "--memPoolSize=workspace:1024M"),
        ("fp16", "jetson-orin-nx", "10.3", "--stronglyTyped --memPoolSize=workspace:1024M"),
        ("qdq", "jetson-orin-nano", "10.3", "--stronglyTyped --memPoolSize=workspace:512M"),
        ("qdq", "jetson-orin-agx-dla1", "10.3",
         "--stronglyTyped --useDLACore=1 --allowGPUFallback --memPoolSize=workspace:2048M"),
        ("qdq", "desktop-gpu", "10.13", "--stronglyTyped"),
        ("fp32", "jetson-orin-nx", "11.4", "--memPoolSize=workspace:1024M"),
        ("fp16", "jetson-orin-agx", "11.4", "--memPoolSize=workspace:2048M"),
        ("qdq", "jetson-orin-agx-dla0", "11.4", "--useDLACore=0 --allowGPUFallback --memPoolSize=workspace:2048M"),
    ],
)
def test_lines_per_version_and_kind(tmp_path, kind, target, version, flags):
    model = _model(tmp_path / "m.onnx", kind=kind)
    per_version = "--separateProfileRun" if version.startswith("10") else "--includeDataTransfers"
    expected = f"--onnx=M {flags} {COMMON_TAIL} {per_version} {SHAPES_B1} {EXPORTS_B1}"
    assert _line(model, target, version) == [expected]


def test_calibration_cache_and_plan_on_tensorrt_10(tmp_path):
    model = _model(tmp_path / "m.onnx")
    plan = _plan(tmp_path / "p.plan.json", {"/conv/Conv": "fp16", "/fc/Gemm": "int8", "/add/Add": "fp16"})
    lines = _line(model, "jetson-orin-nx", "10.3", calibration_cache="/dev/c.calib", plan=plan, batch_sizes=(1, 64))
    flags = ("--int8 --fp16 --calib=/dev/c.calib --precisionConstraints=obey "
             "--layerPrecisions=/conv/Conv:fp16,/add/Add:fp16 --memPoolSize=workspace:1024M")  # fmt: skip
    assert lines[0] == f"--onnx=M {flags} {COMMON_TAIL} --separateProfileRun {SHAPES_B1} {EXPORTS_B1}"
    assert "--minShapes=images:64x1x8x8 --optShapes=images:64x1x8x8 --maxShapes=images:64x1x8x8" in lines[1]
    assert "--saveEngine=/dev/e/b64.plan --exportTimes=/dev/e/b64.times.json" in lines[1]


def test_refusals_are_one_line_errors(tmp_path):
    fp32, qdq = _model(tmp_path / "m.onnx"), _model(tmp_path / "q.onnx", kind="qdq")
    cases = [
        (dict(model=fp32, target="jetson-orin-nx", version="11.4", calibration_cache="c"), "TensorRT 11 has no"),
        (dict(model=qdq, target="jetson-orin-nx", version="10.3", calibration_cache="c"), "carries its own scales"),
        (dict(model=qdq, target="jetson-orin-nx-dla0", version="11.4"), "DLA on AGX Orin only"),
        (dict(model=qdq, target="cpu", version="10.3"), "runs onnxruntime, not TensorRT"),
        (dict(model=qdq, target="desktop-gpu", version="8.6"), "10.x and 11.x"),
        (dict(model=_model(tmp_path / "f.onnx", batch=4), target="desktop-gpu", version="10.13"), "fixed batch of 4"),
    ]
    for case, match in cases:
        with pytest.raises(UserError, match=match) as error:
            extra = {k: v for k, v in case.items() if k not in ("model", "target", "version")}
            trtexec_lines(case["model"], get_target(case["target"]), OUT, trt_version=case["version"], **extra)
        assert "\n" not in str(error.value)


def test_fixed_batch_models_get_no_shape_flags(tmp_path):
    model = _model(tmp_path / "m.onnx", batch=4)
    (line,) = _line(model, "desktop-gpu", "11.4", batch_sizes=(4,))
    assert "Shapes" not in line and "--shapes" not in line


def test_script_runs_each_line_with_its_log(tmp_path):
    model = _model(tmp_path / "m.onnx", kind="qdq")
    out = tmp_path / "out dir"
    lines = trtexec_lines(model, get_target("jetson-orin-nx"), out, batch_sizes=(1, 8))
    script = tmp_path / "run.sh"
    script.write_text(render_script(lines, out, (1, 8)))
    fake = tmp_path / "fake_trtexec"  # records its arguments, one per line
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    subprocess.run(["bash", str(script)], check=True, env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"})
    assert (out / "b1.log").read_text().splitlines() == lines[0]
    assert (out / "b8.log").read_text().splitlines() == lines[1]


def test_cli_prints_the_lines(tmp_path, capsys):
    model = _model(tmp_path / "m.onnx", kind="qdq")
    assert main(["trtexec", str(model), "--target", "jetson-orin-nx", "--batch-sizes", "1"]) == 0
    (printed,) = capsys.readouterr().out.splitlines()
    args = shlex.split(printed)
    assert args[0] == "trtexec" and "--stronglyTyped" in args and f"--onnx={model}" in args
    assert f"--saveEngine={tmp_path / 'm.trtexec' / 'b1.plan'}" in args
    assert main(["trtexec", str(model), "--target", "jetson-orin-nx", "--batch-sizes", "0"]) == 2
