"""import-trtexec: trtexec's --exportTimes/--exportProfile/--exportLayerInfo files and log, field for field.

The layouts are trtexec's own (comma-first records, {"count": N} first in the profile). Excerpts marked
as such are copied from the examples TensorRT ships with trt-engine-explorer (A100, resnet-qat); the
rest comes from tests/fakes/bin/trtexec, a FAKE that writes those layouts with synthetic timings.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.errors import UserError
from engines.targets import get_target
from engines.tensorrt.trtexec import TrtexecOutputs, trtexec_lines
from engines.trtexec_import import (
    TrtexecRun,
    bench_record,
    read_layer_info,
    read_log,
    read_profile,
    read_times,
    tensor_precision,
)
from mimicnorm_deploy.cli import main

FAKE_TRTEXEC = Path(__file__).parent / "fakes" / "bin" / "trtexec"

# Excerpts of trt-engine-explorer's examples/pytorch/resnet/A100/qat/resnet-qat.onnx.engine.*.json.
EXAMPLE_TIMES = (
    '[\n'
    '  { "startEnqMs" : 4.11322, "endEnqMs" : 4.15291, "startH2dMs" : 4.02022, "endH2dMs" : 4.02022, '
    '"startComputeMs" : 4.02022, "endComputeMs" : 4.92954, "startD2hMs" : 4.92954, "endD2hMs" : 4.92954, '
    '"h2dMs" : 0, "computeMs" : 0.909312, "d2hMs" : 0, "latencyMs" : 0.909312 }\n'
    ', { "startEnqMs" : 4.16094, "endEnqMs" : 4.17447, "startH2dMs" : 4.93466, "endH2dMs" : 4.93466, '
    '"startComputeMs" : 4.93466, "endComputeMs" : 5.81837, "startD2hMs" : 5.81837, "endD2hMs" : 5.81837, '
    '"h2dMs" : 0, "computeMs" : 0.883712, "d2hMs" : 0, "latencyMs" : 0.883712 }\n'
    ']\n'
)
EXAMPLE_PROFILE = (
    '[\n'
    '  { "count" : 1 }\n'
    ', { "name" : "QuantizeLinear_2", "timeMs" : 0.06144, "averageMs" : 0.06144, "medianMs" : 0.06144, '
    '"percentage" : 5.60748 }\n'
    ', { "name" : "conv1.weight + QuantizeLinear_7 + Conv_9", "timeMs" : 0.201728, "averageMs" : 0.201728, '
    '"medianMs" : 0.201728, "percentage" : 18.4112 }\n'
    ']\n'
)
EXAMPLE_LAYERS = """{"Layers": [{
  "Name": "QuantizeLinear_2",
  "LayerType": "Reformat",
  "Inputs": [
  {
    "Name": "input.1",
    "Location": "Device",
    "Dimensions": [32,3,224,224],
    "Format/Datatype": "Row major linear FP32"
  }],
  "Outputs": [
  {
    "Name": "onnx::DequantizeLinear_125",
    "Location": "Device",
    "Dimensions": [32,3,224,224],
    "Format/Datatype": "Four wide channel vectorized row major Int8 format"
  }],
  "ParameterType": "Reformat",
  "Origin": "QDQ",
  "TacticValue": "0x0000000000000000"
},{
  "Name": "conv1.weight + QuantizeLinear_7 + Conv_9",
  "LayerType": "CaskConvolution",
  "Inputs": [
  {
    "Name": "onnx::DequantizeLinear_125",
    "Location": "Device",
    "Dimensions": [32,3,224,224],
    "Format/Datatype": "Four wide channel vectorized row major Int8 format"
  }],
  "Outputs": [
  {
    "Name": "onnx::MaxPool_136",
    "Location": "Device",
    "Dimensions": [32,64,112,112],
    "Format/Datatype": "Row major linear FP32"
  }],
  "ParameterType": "Convolution",
  "TacticName": "ampere_fp32_icudnn_int8x4_128x64_relu_medium_nn_v1",
  "TacticValue": "0xb29abdd00304c881"
}],
"Bindings": ["input.1"
,"output"
]}"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_example_files_are_read_field_for_field(tmp_path):
    times = read_times(_write(tmp_path, "t.json", EXAMPLE_TIMES))
    assert times.latency_ms == [0.909312, 0.883712] and times.gpu_compute_ms == [0.909312, 0.883712]
    assert times.h2d_ms == [0, 0] and times.d2h_ms == [0, 0]
    assert times.enqueue_ms == pytest.approx([4.15291 - 4.11322, 4.17447 - 4.16094])
    count, profile = read_profile(_write(tmp_path, "p.json", EXAMPLE_PROFILE))
    assert count == 1 and [p.name for p in profile] == ["QuantizeLinear_2", "conv1.weight + QuantizeLinear_7 + Conv_9"]
    assert (profile[1].total_ms, profile[1].average_ms, profile[1].median_ms, profile[1].percentage) == (
        0.201728, 0.201728, 0.201728, 18.4112)
    layers, bindings = read_layer_info(_write(tmp_path, "l.json", EXAMPLE_LAYERS))
    assert [(layer.layer_type, layer.precision) for layer in layers] == [("Reformat", "fp32"),
                                                                         ("CaskConvolution", "int8")]  # fmt: skip
    assert layers[1].tactic == "ampere_fp32_icudnn_int8x4_128x64_relu_medium_nn_v1"
    assert bindings == ["input.1", "output"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Thirty-two wide channel vectorized row major FP16 format", "fp16"), ("Row major linear FP32", "fp32"),
     ("Channel major INT8 format where channel % 16 == 0", "int8"), ("Row major linear UInt8 format", "uint8"),
     ("Row major linear BFloat16 format", "bf16"), ("Something new", "unknown")],
)  # fmt: skip
def test_tensor_precision_from_format_descriptions(text, expected):
    assert tensor_precision(text) == expected


@pytest.mark.parametrize(
    ("name", "text", "reader", "match"),
    [
        ("t.json", EXAMPLE_PROFILE, read_times, "not a trtexec timing record"),
        ("t.json", "[]", read_times, "non-empty list"),
        ("t.json", EXAMPLE_TIMES.replace('"latencyMs" : 0.909312', '"latencyMs" : 0.95'), read_times,
         "is not h2d \\+ compute \\+ d2h"),
        ("t.json", EXAMPLE_TIMES.replace("0.909312 }", "nan }"), read_times, "not valid JSON"),
        ("t.json", EXAMPLE_TIMES[:200], read_times, "not valid JSON"),
        ("p.json", EXAMPLE_TIMES, read_profile, "count"),
        ("p.json", EXAMPLE_PROFILE.replace('  { "count" : 1 }\n, ', "  "), read_profile, "count"),
        ("p.json", EXAMPLE_PROFILE.replace('"count" : 1', '"count" : 0'), read_profile, "not a positive integer"),
        ("p.json", EXAMPLE_PROFILE.replace('"medianMs" : 0.06144, ', ""), read_profile, "not a layer record"),
        ("l.json", EXAMPLE_PROFILE, read_layer_info, "no \"Layers\" list"),
        ("l.json", '{"Layers": ["QuantizeLinear_2"], "Bindings": []}', read_layer_info, "--profilingVerbosity"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, name, text, reader, match):
    with pytest.raises(UserError, match=match) as error:
        reader(_write(tmp_path, name, text))
    assert "\n" not in str(error.value)


def _tiny_model(path):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_onnx import make_tiny_resnet

    return make_tiny_resnet(path, size=8)


def _fake_env():
    # the fake runs on this interpreter, which has onnx
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def trtexec_run(tmp_path_factory):
    """Build + benchmark lines for batch 1 and 8 run through the FAKE trtexec, as run.sh does."""
    tmp_path = tmp_path_factory.mktemp("trtexec")
    model = _tiny_model(tmp_path / "model.onnx")
    out = tmp_path / "trtexec"
    out.mkdir()
    lines = trtexec_lines(model, get_target("jetson-orin-nx"), out, batch_sizes=(1, 8), calibration_cache="c.calib")
    for batch_size, line in zip((1, 8), lines, strict=True):
        with open(TrtexecOutputs.for_batch(out, batch_size).log, "w") as log:
            subprocess.run([sys.executable, str(FAKE_TRTEXEC), *line], stdout=log, check=True, env=_fake_env())
    return out


def test_fake_trtexec_run_becomes_a_bench_record(trtexec_run):
    b1, b8 = (TrtexecOutputs.for_batch(trtexec_run, b) for b in (1, 8))
    record = bench_record([TrtexecRun(str(b1.times), str(b1.log)), TrtexecRun(str(b8.times), str(b8.log))],
                          profile=str(b1.profile), layers=str(b1.layers), target="jetson-orin-nx")  # fmt: skip
    times = json.loads(b8.times.read_text())
    entry = record["latency"][1]
    assert entry["batch_size"] == 8 and entry["timing_source"] == "trtexec"
    assert entry["samples_ms"] == [round(t["latencyMs"], 3) for t in times]
    assert entry["gpu_compute_ms"] == [round(t["computeMs"], 3) for t in times]
    assert entry["p50_ms"] == pytest.approx(np.percentile(np.round([t["latencyMs"] for t in times], 3), 50))
    log = read_log(b8.log)
    assert entry["throughput_ips"] == pytest.approx(log.throughput_qps * 8)
    assert record["latency"][0]["batch_size"] == 1
    engine = record["engine"]
    assert (engine["backend_version"], engine["device"]["name"], engine["device"]["compute_capability"]) == (
        "10.3.0", "Orin", "8.7")
    assert engine["precision"] == "int8" and engine["command"].startswith("trtexec --onnx=")
    assert record["memory"]["device_context_bytes"] == round(0.0371094 * 2**20)
    assert {row["name"] for row in record["layers"]} == {layer.name for layer in read_layer_info(b1.layers)[0]}
    assert all("average_ms" in row and row["precision"] in ("int8", "fp16") for row in record["layers"])


def test_mismatched_files_are_refused(trtexec_run, tmp_path):
    b1, b8 = (TrtexecOutputs.for_batch(trtexec_run, b) for b in (1, 8))
    short = tmp_path / "short.times.json"
    records = b1.times.read_text().splitlines()
    short.write_text("\n".join(records[:5] + ["]"]) + "\n")  # a shorter trace: another run than the log's
    with pytest.raises(UserError, match="they come from different runs"):
        bench_record([TrtexecRun(str(short), str(b1.log))])
    other = tmp_path / "other.profile.json"
    other.write_text(EXAMPLE_PROFILE)
    with pytest.raises(UserError, match="profile and layer information come from different engines"):
        bench_record([TrtexecRun(str(b1.times), str(b1.log))], profile=str(other), layers=str(b1.layers))
    with pytest.raises(UserError, match="batch size is unknown"):
        bench_record([TrtexecRun(str(b1.times))])
    with pytest.raises(UserError, match="ran batch 8, not 1"):
        bench_record([TrtexecRun(str(b8.times), str(b8.log), batch_size=1)])
    failed = tmp_path / "failed.log"
    failed.write_text(b1.log.read_text().replace("&&&& PASSED", "&&&& FAILED"))
    with pytest.raises(UserError, match="trtexec reported FAILED"):
        bench_record([TrtexecRun(str(b1.times), str(failed))])
    with pytest.raises(UserError, match="not a trtexec log"):
        read_log(_write(tmp_path, "x.log", "hello\n"))
    edited = tmp_path / "edited.log"
    edited.write_text(b1.log.read_text().replace("] [I] SMs: 8", "] [I] SMs: eight"))
    with pytest.raises(UserError, match=r"edited.log:\d+: unreadable value in 'SMs: eight'"):
        read_log(edited)
    other_gpu = tmp_path / "other_gpu.log"
    other_gpu.write_text(b8.log.read_text().replace("Selected Device: Orin", "Selected Device: NVIDIA H100"))
    with pytest.raises(UserError, match="different TensorRT versions or GPUs"):
        bench_record([TrtexecRun(str(b1.times), str(b1.log)), TrtexecRun(str(b8.times), str(other_gpu))])


def test_cli_import_trtexec_writes_the_bench_json(trtexec_run, tmp_path, capsys):
    b1, b8 = (TrtexecOutputs.for_batch(trtexec_run, b) for b in (1, 8))
    out = tmp_path / "bench.json"
    assert main(["import-trtexec", "--times", str(b1.times), "--log", str(b1.log), "--times", str(b8.times),
                 "--log", str(b8.log), "--profile", str(b1.profile), "--layers", str(b1.layers),
                 "--target", "jetson-orin-nx", "--out", str(out)]) == 0  # fmt: skip
    document = json.loads(out.read_text())
    assert document["schema"] == "mimicnorm-deploy/bench" and [e["batch_size"] for e in document["latency"]] == [1, 8]
    assert "batch    8: p50" in capsys.readouterr().out
    assert main(["import-trtexec", "--times", str(b1.times), "--log", str(b1.log), "--log", str(b8.log),
                 "--out", str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert "one --log per --times" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
