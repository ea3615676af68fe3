"""scripts/bench_torch_vs_ort.py on a tiny run: it builds the torch engines next to the run's
ONNX Runtime engine, times them in one interleaved session and reports ratios with intervals.
The figures mean nothing here (toy durations); the plumbing must hold."""

import json
from pathlib import Path

import pytest
from script_loader import load_script

pytest.importorskip("torch")

from engines import build_engine  # noqa: E402
from engines.cpu import cpu_features  # noqa: E402
from mimicnorm_deploy.layout import RunLayout  # noqa: E402
from mimicnorm_deploy.training.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from mimicnorm_deploy.training.export import export_onnx  # noqa: E402
from mimicnorm_deploy.training.freeze import freeze_checkpoint  # noqa: E402


def tiny_run(root: Path) -> RunLayout:
    """A run directory as the demo leaves it, for one twin: frozen model and ONNX Runtime FP32 engine."""
    layout = RunLayout(root)
    layout.model_dir("mimic").mkdir(parents=True)
    meta = CheckpointMeta("resnet20", "mimic", 10, 1, 16, [0.3], [0.4], [str(i) for i in range(10)], "test")
    checkpoint = save_checkpoint(layout.checkpoint("mimic"), meta.build_model(), meta)
    freeze_checkpoint(checkpoint, layout.frozen("mimic"))
    export_onnx(layout.frozen("mimic"), layout.onnx("mimic"))
    build_engine(layout.onnx("mimic"), layout.engine("mimic", "fp32"))
    return layout


def test_torch_variants_follow_the_cpu():
    script = load_script("bench_torch_vs_ort")
    assert script.torch_variants(["eager"], bf16=False) == [("torch-eager-fp32", "eager", "fp32")]
    assert [v for v, _, _ in script.torch_variants(["eager", "compile"], bf16=True)] == [
        "torch-eager-fp32", "torch-eager-bf16", "torch-compile-fp32", "torch-compile-bf16"]  # fmt: skip


def test_a_run_without_the_demo_is_refused(tmp_path, capsys):
    assert load_script("bench_torch_vs_ort").main([str(tmp_path), "--norms", "mimic"]) == 2
    assert "no frozen model" in capsys.readouterr().err


@pytest.mark.slow
def test_eager_engines_against_onnxruntime(tmp_path):
    layout = tiny_run(tmp_path / "run")
    script = load_script("bench_torch_vs_ort")
    argv = [str(layout.root), "--rounds", "2", "--seconds", "0.2", "--batch-sizes", "1,2", "--modes", "eager",
            "--norms", "mimic"]  # fmt: skip
    assert script.main(argv) == 0
    out = layout.root / "bench-torch-vs-ort"
    rows = json.loads((out / "summary.json").read_text())["rows"]
    torch_variants = ["torch-eager-fp32"] + (["torch-eager-bf16"] if cpu_features().bf16_arithmetic else [])
    assert {(row["variant"], row["batch_size"]) for row in rows} == {
        (variant, batch) for variant in ["fp32", *torch_variants] for batch in (1, 2)}  # fmt: skip
    for row in rows:
        ratio = row["ratio_to_onnxruntime_fp32"]
        assert ratio["low"] <= ratio["value"] <= ratio["high"] and ratio["paired"]
        if row["variant"] == "fp32":
            assert ratio["value"] == 1.0  # the baseline against itself
        assert row["peak_rss_bytes"] > 0
    for variant in ["fp32", *torch_variants]:
        bench = json.loads((out / f"mimic-{variant}.json").read_text())
        assert bench["schema"] == "mimicnorm-deploy/bench" and bench["session"]["rounds"] == 2
    assert (layout.engine("mimic", "torch-eager-fp32") / "engine.json").is_file()
    assert "torch-eager-fp32" in (out / "summary.md").read_text()
