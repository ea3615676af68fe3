"""The CLI end to end on tiny synthetic data, its error contract, and the torch-free side."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from qdq_helpers import count_qdq

pytest.importorskip("torch")

from calibration.qdq import qdq_zero_point_violations  # noqa: E402
from engines.artifacts import save_image_set  # noqa: E402
from engines.cpu import cpu_features  # noqa: E402
from mimicnorm_deploy.cli import main  # noqa: E402
from mimicnorm_deploy.layout import EQUALIZED_VARIANT, PLAN_VARIANT, TENSORRT_VARIANT, VARIANTS, RunLayout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--dataset", "synthetic", "--quick", "--out", str(out)]) == 0
    return RunLayout(out)


def test_demo_runs_every_stage_for_both_models(demo_run):
    report = json.loads((demo_run.report_dir / "report.json").read_text())
    assert report["schema"] == "mimicnorm-deploy/report" and report["schema_version"] == 2
    assert set(report["models"]) == {"mimic", "bn"}
    for norm, model in report["models"].items():
        assert set(model["engines"]) == set(VARIANTS)
        fp32 = model["engines"]["fp32"]
        # 4 balanced synthetic classes: chance is 0.25 (16 of 64 images, sd 3.5). The two quick
        # epochs' trajectory differs between CPUs: 0.48 on an AMD EPYC, above 0.5 on a Xeon.
        assert fp32["accuracy"] > 0.4
        for variant in VARIANTS[1:]:
            engine = model["engines"][variant]
            # Q/DQ simulation is left to --extended (the time budget)
            assert engine["top1_agreement_vs_fp32"] is not None and "simulated_accuracy" not in engine
            assert engine["latency"]["1"]["p50_ms"] > 0 and engine["memory"]["peak_rss_bytes"] > 0
        # Exported graphs are BN-free; the TensorRT Q/DQ graph is symmetric (zero point 0) and comes
        # with a TensorRT 10 calibration cache; this CPU's engines use its ONNX Runtime encoding.
        assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(demo_run.onnx(norm))).graph.node}
        tensorrt = onnx.load(str(demo_run.onnx(norm, TENSORRT_VARIANT)))
        assert count_qdq(tensorrt)["QuantizeLinear"] > 0 and qdq_zero_point_violations(tensorrt) == []
        assert demo_run.tensorrt_cache(norm).read_text().startswith("TRT-")
        expected = "uint8" if cpu_features().is_x86 else "int8-symmetric"
        for variant in VARIANTS[1:]:
            assert model["engines"][variant]["calibration"]["activations"] == expected
        # The default network is the depthwise one; the FP16 model exists unless FP16 cannot hold the
        # model (a finding the report lists, see tests/test_demo_fp16_refusal.py).
        assert model["arch"] == "mobilenetv2_050"
        refused = [r for r in report["fp16_refusals"] if r["norm"] == norm]
        assert demo_run.onnx(norm, "fp16").exists() == (not refused)
    # The BN twin gets a gated per-tensor plan for TensorRT, scored on the test split, in FP16 unless
    # FP16 cannot hold the model (then FP32).
    plans = [a for a in report["tensorrt_artifacts"] if a["variant"] == PLAN_VARIANT]
    assert [p["norm"] for p in plans] == ["bn"] and plans[0]["target"] == "desktop-gpu"
    assert 0 <= plans[0]["simulated_accuracy"] <= 1 and "test.npz" in plans[0]["calibration"]["measured_on"]
    plan = plans[0]["calibration"]["plan"]
    refused = [r for r in report["fp16_refusals"] if r["norm"] == "bn"]
    assert plan["gate"]["max_top1_drop"] == 0.01 and plan["high_precision"] == ("fp32" if refused else "fp16")
    assert set(plan["layers"].values()) <= {"int8", plan["high_precision"]} and plan["result"]["passed"]
    # Per-tensor INT8 of both twins on the test split; cross-layer equalization is left to --extended.
    rows = {(r["norm"], r["what"]) for r in report["per_tensor_int8"]}
    assert rows == {("mimic", "per-tensor"), ("bn", "per-tensor")}
    assert not demo_run.onnx("bn", EQUALIZED_VARIANT).exists()
    markdown = (demo_run.report_dir / "report.md").read_text()
    assert "## Per-tensor INT8: what folding BN costs" in markdown and "gated plan" in markdown
    ratios = report["comparisons"]["mimic_vs_bn"]
    assert 0 < ratios["activation_memory_ratio"] < 1
    # Every ratio the report prints comes from the one interleaved bench of all six engines.
    assert len({e["environment"]["taken"] for m in report["models"].values() for e in m["engines"].values()}) == 1
    twins = report["comparisons"]["twins"]
    assert {(p["a"]["variant"], p["batch_size"]) for p in twins} == {(v, b) for v in VARIANTS for b in (1, 64)}
    assert all(p["latency_ratio"]["paired"] and p["latency_ratio"]["low"] <= p["latency_ratio"]["high"] for p in twins)
    assert "<svg" in (demo_run.report_dir / "report.html").read_text()
    assert "MimicNorm" in (demo_run.report_dir / "report.md").read_text()
    manifest = json.loads((demo_run.model_dir("mimic") / "manifest.json").read_text())
    assert manifest["artifacts"]["model.onnx"]["stage"] == "export"
    assert "frozen.safetensors" in manifest["artifacts"]["model.onnx"]["inputs"]


def test_extended_demo_adds_equalization_and_simulated_scores(tmp_path):
    # --arch resnet20 too: the demo's other documented network
    assert main(["demo", "--dataset", "synthetic", "--quick", "--extended", "--arch", "resnet20",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    run = RunLayout(tmp_path)
    report = json.loads((run.report_dir / "report.json").read_text())
    assert {model["arch"] for model in report["models"].values()} == {"resnet20"}
    for model in report["models"].values():
        assert all(0 <= model["engines"][variant]["simulated_accuracy"] <= 1 for variant in VARIANTS[1:])
    rows = {(r["norm"], r["what"]) for r in report["per_tensor_int8"]}
    assert rows == {("mimic", "per-tensor"), ("bn", "per-tensor"), ("bn", "per-tensor after cross-layer equalization")}
    assert run.onnx("bn", EQUALIZED_VARIANT).exists()
    assert "cross-layer equalization" in (run.report_dir / "report.md").read_text()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_dataset(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "dataset-fashion-mnist" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_unknown_architecture(tmp_path, capsys):
    assert main(["train", "--arch", "resnet21", "--dataset", "synthetic", "--out", str(tmp_path / "r")]) == 2
    assert "unknown architecture 'resnet21'" in _error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert main(["freeze", str(tmp_path / "junk.safetensors"), "--out", str(tmp_path / "f.safetensors")]) == 2
    assert "not a safetensors checkpoint" in _error_line(capsys)
    assert not (tmp_path / "f.safetensors").exists()


def test_checkpoint_for_another_architecture(demo_run, tmp_path, capsys):
    # The BN twin's weights under MimicNorm metadata: they do not fit the declared model.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(demo_run.checkpoint("mimic")), framework="pt") as fh:
        metadata = fh.metadata()
    save_file(load_file(str(demo_run.checkpoint("bn"))), str(tmp_path / "swapped.safetensors"), metadata=metadata)
    assert main(["freeze", str(tmp_path / "swapped.safetensors"), "--out", str(tmp_path / "f.safetensors")]) == 2
    assert "made for another architecture" in _error_line(capsys)
    assert not (tmp_path / "f.safetensors").exists()


def test_not_onnx(demo_run, tmp_path, capsys):
    (tmp_path / "junk.onnx").write_text("not a model")
    out = tmp_path / "q.onnx"
    assert main(["calibrate", str(tmp_path / "junk.onnx"), "--calib", str(demo_run.calibration_set),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "not an ONNX model" in _error_line(capsys)
    assert main(["build", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "e"), "--precision", "fp32"]) == 2
    assert "not an ONNX model" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_empty_calibration_set(demo_run, tmp_path, capsys):
    save_image_set(tmp_path / "empty.npz", np.zeros((0, 1, 16, 16), np.uint8), None, 1 / 255)
    out = tmp_path / "q.onnx"
    assert main(["calibrate", str(demo_run.onnx("mimic")), "--calib", str(tmp_path / "empty.npz"),
                 "--out", str(out)]) == 2  # fmt: skip
    assert "empty" in _error_line(capsys)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_quantized_model_passed_as_fp32(demo_run, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["calibrate", str(demo_run.onnx("mimic", VARIANTS[1])), "--calib",
                 str(demo_run.calibration_set), "--out", str(out)]) == 2  # fmt: skip
    assert "already quantized" in _error_line(capsys)
    assert not out.exists()


def test_jetson_side_runs_without_torch(demo_run, tmp_path):
    """calibrate, build, bench and report from the artifacts, in a process where torch is absent."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mimicnorm_deploy", *args], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    needs_torch = cli("models")
    assert needs_torch.returncode == 2 and "needs PyTorch" in needs_torch.stderr
    q = tmp_path / "q.onnx"
    steps = [
        ("calibrate", str(demo_run.onnx("bn")), "--calib", str(demo_run.calibration_set), "--out", str(q),
         "--per-channel", "--target", "desktop-gpu"),
        ("build", str(q), "--out", str(tmp_path / "engine"), "--precision", "int8"),
        ("bench", str(tmp_path / "engine"), "--out", str(tmp_path / "bench.json"), "--eval", str(demo_run.test_set),
         "--reference", str(demo_run.engine("bn", "fp32")), "--duration", "0.05"),
        ("report", str(demo_run.root), "--out", str(tmp_path / "report")),
    ]  # fmt: skip
    for step in steps:
        done = cli(*step)
        assert done.returncode == 0, (step[0], done.stderr)
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["accuracy"]["top1_agreement"] > 0.5
    assert json.loads(q.with_suffix(".json").read_text())["quantize"]["config"]["reduce_range"] is False
    assert (tmp_path / "report" / "report.md").is_file()


def test_models_lists_parameters_and_macs(capsys):
    assert main(["models", "--in-chans", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resnet20 "))
    params, macs = map(float, row.split()[1:3])
    assert params == pytest.approx(0.271, abs=0.001) and macs == pytest.approx(40.5, abs=0.5)


def test_profile_memory_compares_the_twins(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["profile-memory", "--model", "resnet20", "--in-chans", "1", "--batch", "8", "--device", "cpu",
                 "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["schema"] == "mimicnorm-deploy/memory-profile" and result["ratio_of"] == "mimic/bn"
    assert 0 < result["ratios"]["activation_bytes"] < 1
    assert "activation_bytes" in capsys.readouterr().out


def test_resume_without_an_interrupted_run(tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic", "--resume", "--out", str(tmp_path / "run")]) == 2
    assert "error: " in _error_line(capsys)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
