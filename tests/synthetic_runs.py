"""Fake run directories for report and compare tests: JSON artifacts shaped like the real stages'
output, with latency samples drawn from known distributions (no training, no engines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.artifacts import write_json
from engines.bench import LatencyResult
from engines.schemas import BENCH, CALIBRATION, TRAIN_REPORT
from mimicnorm_deploy.layout import TENSORRT_VARIANT, VARIANTS, RunLayout

SHAPE = ["batch", 1, 28, 28]
ENVIRONMENT = {
    "taken": "2026-12-02T00:00:00+00:00", "host": "fake-host",
    "cpu": {"model_name": "Test CPU", "arch": "x86_64", "logical_cores": 2, "affinity": [0, 1]},
    "load_average_before": [0.1, 0.1, 0.1], "load_average_after": [1.0, 0.5, 0.2], "versions": {"onnxruntime": "1.0"},
}  # fmt: skip


def samples(seed: int, n: int = 300, scale: float = 1.0) -> np.ndarray:
    """Right-skewed like real latencies: a floor plus a lognormal tail; median scales with `scale`."""
    rng = np.random.default_rng(seed)
    return scale * (0.5 + rng.lognormal(-1.0, 0.4, n))


def write_bench(path: Path, norm: str, variant: str, latencies: dict[int, np.ndarray], *, session: str = "s1",
                rounds: list[int] | None = None, shape: list = SHAPE, arch: str = "resnet20",
                accuracy: float | None = None) -> Path:  # fmt: skip
    latency = [LatencyResult.from_samples(b, values, rounds=rounds).to_dict() for b, values in latencies.items()]
    record = {
        "engine_dir": f"{norm}/engines/{variant}",
        "model": {"arch": arch, "norm": norm, "variant": variant},
        "engine": {"backend": "onnxruntime", "precision": "int8" if "int8" in variant else "fp32",
                   "device": {"name": "cpu", "model_name": "Test CPU", "arch": "x86_64", "int8_dot_product": True}},
        "inputs": [{"name": "images", "shape": shape, "dtype": "float32"}],
        "environment": ENVIRONMENT,
        "session": {"id": session, "rounds": len(rounds) if rounds else 1},
        "latency": latency,
        "memory": {"peak_rss_bytes": 80 * 2**20, "baseline_rss_bytes": 60 * 2**20, "rss_batch_size": 64,
                   "model_file_bytes": (300 if variant == "fp32" else 90) * 2**10},
    }  # fmt: skip
    if accuracy is not None:
        record["accuracy"] = {"accuracy": accuracy, "images": 100, "top1_agreement": 0.99, "logits_sqnr_db": 30.0}
    return write_json(path, *BENCH, record)


def write_run(root: Path, *, scale_bn: float = 1.0, seed: int = 0, shape: list = SHAPE, session: str = "s1",
              variants: tuple[str, ...] = ("fp32", VARIANTS[2]), with_model_files: bool = False) -> Path:
    """Bench JSONs for both norms (INT8 0.6x FP32's latency, BN `scale_bn` x MimicNorm's), and with
    `with_model_files` the train reports and calibration records `report` reads."""
    layout = RunLayout(root)
    rounds = [60] * 5
    for i, norm in enumerate(("mimic", "bn")):
        for j, variant in enumerate(variants):
            speed = (scale_bn if norm == "bn" else 1.0) * (0.6 if variant != "fp32" else 1.0)
            latencies = {1: samples(seed + 10 * i + j, scale=speed), 64: samples(seed + 100 + 10 * i + j,
                                                                                 scale=30 * speed)}  # fmt: skip
            write_bench(layout.bench(norm, variant), norm, variant, latencies, session=session, rounds=rounds,
                        shape=shape, accuracy=0.9 - 0.01 * j)  # fmt: skip
        if with_model_files:
            _write_model_files(layout, norm, variants)
    return root


def _write_model_files(layout: RunLayout, norm: str, variants: tuple[str, ...]) -> None:
    write_json(layout.train_report(norm), *TRAIN_REPORT, {
        "config": {"arch": "resnet20", "epochs": 1.0}, "final_test_accuracy": 0.9, "best_test_accuracy": 0.9,
        "activation_memory": {"bytes": (8 if norm == "mimic" else 12) * 2**20, "batch_size": 32},
        "mean_step_ms": 50.0, "step_ms_percentiles": {"p10": 45.0, "p50": 50.0, "p90": 60.0},
    })  # fmt: skip
    for variant in [v for v in variants if v != "fp32"] + [TENSORRT_VARIANT]:
        tensorrt = variant == TENSORRT_VARIANT
        layers = [{"node": f"conv{k}", "op_type": "Conv", "precision": "int8", "output_sqnr_db": 40.0 - 3 * k,
                   "weight_spread": 2.0, "sensitivity_sqnr_db": None} for k in range(5)]  # fmt: skip
        plan = None
        if tensorrt:
            plan = {"high_precision": "fp16", "layers": {"conv0": "fp16", **{f"conv{k}": "int8" for k in range(1, 5)}},
                    "moved": [{"node": "conv0", "to": "fp16", "reason": "most sensitive"}],
                    "gate": {"max_top1_drop": 0.01, "min_logits_sqnr_db": None},
                    "result": {"top1_drop": 0.004, "logits_sqnr_db": 31.0, "passed": True}}  # fmt: skip
        record = {
            "target": "desktop-gpu" if tensorrt else "cpu", "calibration_images": 512,
            "high_precision": "fp16" if tensorrt else "fp32",
            "encoding": {"activations": "int8-symmetric" if tensorrt else "uint8", "reduce_range": False},
            "quantize": {"config": {"per_channel": True}},
            "worst_weight_spread": {"spread": 3.5, "node": "conv3", "name": "conv3.weight"},
            "quality": {"accuracy": 0.895, "logits_sqnr_db": 33.0, "layers": layers},
            "plan": plan,
        }  # fmt: skip
        if tensorrt:
            record["trt_cache"] = str(layout.tensorrt_cache(norm))
            record["fp16"] = str(layout.onnx(norm, "fp16"))
        write_json(layout.calibration_record(norm, variant), *CALIBRATION, record)
