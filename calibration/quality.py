"""Quality report of one calibrated model against its FP32 original: per layer and at the logits.

Per layer (every `qdq.quantizable_layers` node): its weight-range spread (max / median of the
per-channel ranges), the precision it was given, the SQNR of its output in the calibrated model
against the FP32 model (the error accumulated up to that layer), and, when a plan was made, its
sensitivity (logits SQNR with only that layer in INT8). At the logits: SQNR, top-1 agreement with
FP32, and test accuracy when the images are labelled, both with Q/DQ simulated in float and, where
the target's kernels run on this machine, with those kernels.

The logits figures use every image; the per-layer SQNR uses the first LAYER_SQNR_IMAGES. Fetching
every layer's output (and summing it in float64) cost more than running the models: on a
MobileNetV2 over 10,000 test images it took two thirds of a quality report's time, and a
signal-to-noise ratio over a thousand images' activations is already settled to a small
fraction of a dB.

Rendered as JSON (inside the calibration record), Markdown and a PNG of the per-layer SQNR.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from calibration.metrics import accuracy, sqnr_db, sqnr_from_sums, top1_agreement, weight_range_spread
from calibration.qdq import quantizable_layers
from engines.artifacts import atomic_path, atomic_write_text
from engines.onnx_model import load_onnx
from engines.onnxruntime.session import BATCH_SIZE, create_session, session_batches


@dataclass
class LayerQuality:
    node: str
    op_type: str
    precision: str  # "int8", "fp16" or "fp32"
    weight_spread: float | None  # max / median per-channel weight range; None for a residual Add
    output_sqnr_db: float  # this layer's output, calibrated model vs FP32 (accumulated error)
    sensitivity_sqnr_db: float | None = None  # logits SQNR with only this layer in INT8 (from a plan)


LAYER_SQNR_IMAGES = 1024  # the first images of a quality report's set, where per-layer SQNR is measured


@dataclass
class ModelQuality:
    images: int  # how many images the figures below were measured on
    layer_images: int  # how many of them (the first) the per-layer output SQNR was measured on
    image_set: str  # which images: e.g. "test split", "calibration hold-out"
    logits_sqnr_db: float  # simulated (Q/DQ as float ops)
    top1_agreement: float  # simulated
    accuracy_fp32: float | None  # with labels
    accuracy: float | None  # simulated, with labels
    kernels: str | None  # the backend that ran the target's kernels ("onnxruntime"), None where they cannot run here
    kernel_accuracy: float | None = None
    kernel_top1_agreement: float | None = None
    kernel_logits_sqnr_db: float | None = None
    layers: list[LayerQuality] = field(default_factory=list)


def measure_quality(
    fp32_model: str | os.PathLike,
    calibrated_model: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    image_set: str,
    precisions: dict[str, str] | None = None,
    sensitivity: dict[str, float] | None = None,
    kernels: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ModelQuality:
    """Compare `calibrated_model` with `fp32_model` on `images` (float32 model inputs).

    `precisions` gives each quantizable layer's precision (a plan's layers; default all "int8");
    `kernels` names the runtime of the target's own kernels when they run here (then the
    calibrated model also runs with ONNX Runtime's graph optimizations, which fuse Q/DQ into its
    INT8 kernels). `progress(done, total)` counts images.
    """
    model = load_onnx(fp32_model)
    layers = quantizable_layers(model)
    spreads = {s.node: s.spread for s in weight_range_spread(model)}
    layer_images = min(len(images), LAYER_SQNR_IMAGES)
    runs = _compare_runs(model, load_onnx(calibrated_model), layers, images, layer_images, kernels, progress)
    logits, signal, noise = runs
    fp32, sim = logits["fp32"], logits["simulated"]
    quality = ModelQuality(
        images=len(images),
        layer_images=layer_images,
        image_set=image_set,
        logits_sqnr_db=sqnr_db(fp32, sim),
        top1_agreement=top1_agreement(fp32, sim),
        accuracy_fp32=accuracy(fp32, labels) if labels is not None else None,
        accuracy=accuracy(sim, labels) if labels is not None else None,
        kernels=kernels,
        layers=[
            LayerQuality(
                node=node.name,
                op_type=node.op_type,
                precision="int8" if precisions is None else precisions[node.name],
                weight_spread=spreads.get(node.name),
                output_sqnr_db=sqnr_from_sums(signal[i], noise[i]),
                sensitivity_sqnr_db=(sensitivity or {}).get(node.name),
            )
            for i, node in enumerate(layers)
        ],
    )
    if kernels:
        quality.kernel_logits_sqnr_db = sqnr_db(fp32, logits["kernels"])
        quality.kernel_top1_agreement = top1_agreement(fp32, logits["kernels"])
        quality.kernel_accuracy = accuracy(logits["kernels"], labels) if labels is not None else None
    return quality


def _compare_runs(
    model: onnx.ModelProto,
    calibrated: onnx.ModelProto,
    layers: list[onnx.NodeProto],
    images: np.ndarray,
    probed: int,
    kernels: str | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """FP32 and the calibrated model (simulated, and with its INT8 kernels when `kernels`) run
    batch by batch on `images`: their logits ("fp32", "simulated", "kernels"), and per layer, over
    the first `probed` images, the sums of the FP32 output's squares (signal) and of its squared
    difference from the simulated one (noise)."""
    signal = np.zeros(len(layers))
    noise = np.zeros(len(layers))
    logits: dict[str, list[np.ndarray]] = {"fp32": [], "simulated": [], "kernels": []}
    done = 0
    for part, probed_layers in ((images[:probed], layers), (images[probed:], [])):
        if not len(part):
            continue
        for ref_layers, sim_layers, batch_logits in _batches_of_both(model, calibrated, probed_layers, part, kernels):
            for index, (ref, sim) in enumerate(zip(ref_layers, sim_layers, strict=True)):
                ref, sim = ref.astype(np.float64), sim.astype(np.float64)
                signal[index] += float(np.sum(ref**2))
                noise[index] += float(np.sum((ref - sim) ** 2))
            for key, values in batch_logits.items():
                logits[key].append(values)
            done += len(batch_logits["fp32"])
            if progress is not None:
                progress(done, len(images))
    return {key: np.concatenate(values) for key, values in logits.items() if values}, signal, noise


def _batches_of_both(
    model: onnx.ModelProto,
    calibrated: onnx.ModelProto,
    layers: list[onnx.NodeProto],
    images: np.ndarray,
    kernels: str | None,
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]]:
    """Per batch of `images`: the FP32 and simulated outputs of `layers`, and the logits of each run."""
    batches = -(-len(images) // BATCH_SIZE)
    runs = zip(
        _probe(model, [node.output[0] for node in layers], images, simulate=True),
        _probe(calibrated, _layer_outputs(calibrated, [node.name for node in layers]), images, simulate=True),
        _probe(calibrated, [], images, simulate=False) if kernels else itertools.repeat(None, batches),
        strict=True,
    )
    for (ref_logits, *ref_layers), (sim_logits, *sim_layers), kernel_outputs in runs:
        batch_logits = {"fp32": ref_logits, "simulated": sim_logits.astype(np.float32)}
        if kernel_outputs is not None:
            batch_logits["kernels"] = kernel_outputs[0].astype(np.float32)
        yield ref_layers, sim_layers, batch_logits


def _probe(
    model: onnx.ModelProto, extra_outputs: list[str], images: np.ndarray, *, simulate: bool
) -> Iterator[list[np.ndarray]]:
    """Batches of [logits, *extra_outputs] (named intermediate tensors) of `model` on `images`;
    `simulate` runs Q/DQ as float ops, else ONNX Runtime fuses them into its INT8 kernels."""
    graph_outputs = [output.name for output in model.graph.output]
    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's model stays as it was
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in extra_outputs if name not in graph_outputs)
    session = create_session(model, graph_optimization="disabled" if simulate else "all")
    return session_batches(session, images, output_names=[graph_outputs[0], *extra_outputs])


def _layer_outputs(model: onnx.ModelProto, node_names: list[str]) -> list[str]:
    """The output tensor of each named node in a calibrated model (nodes keep their names through
    quantization and FP16 conversion; a renamed graph output is followed to its new name)."""
    by_name = {node.name: node for node in model.graph.node}
    return [by_name[name].output[0] for name in node_names]


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return ""
    if not np.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def render_quality_markdown(quality: ModelQuality, title: str) -> str:
    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.2f} %"

    lines = [
        f"# {title}",
        "",
        f"Measured on {quality.images} images ({quality.image_set}); the per-layer output SQNR on the first "
        f"{quality.layer_images} of them. *Simulated*: Q/DQ run as float ops "
        "(ONNX Runtime, graph optimizations off), the arithmetic every target approximates.",
        "",
        "| | simulated | target kernels |",
        "|---|---|---|",
        f"| logits SQNR vs FP32 | {_num(quality.logits_sqnr_db, '.1f')} dB | "
        f"{_num(quality.kernel_logits_sqnr_db, '.1f')}{' dB' if quality.kernel_logits_sqnr_db is not None else ''} |",
        f"| top-1 agreement with FP32 | {pct(quality.top1_agreement)} | {pct(quality.kernel_top1_agreement)} |",
        f"| accuracy (FP32: {pct(quality.accuracy_fp32) or 'no labels'}) | {pct(quality.accuracy)} | "
        f"{pct(quality.kernel_accuracy)} |",
        "",
        f"Target kernels: {quality.kernels or 'not run here (the target runtime is not on this machine)'}.",
        "",
        "| layer | op | precision | weight-range spread | output SQNR dB | alone in INT8: logits SQNR dB "
        "(sensitivity rank) |",
        "|---|---|---|---|---|---|",
    ]
    # Rank 1 = the most sensitive layer: the lowest logits SQNR when it alone is in INT8.
    measured = sorted((layer for layer in quality.layers if layer.sensitivity_sqnr_db is not None),
                      key=lambda layer: layer.sensitivity_sqnr_db)  # fmt: skip
    rank = {layer.node: index + 1 for index, layer in enumerate(measured)}
    for layer in quality.layers:
        spread = "" if layer.weight_spread is None else f"{_num(layer.weight_spread, '.1f')}x"
        sensitivity = _num(layer.sensitivity_sqnr_db, ".1f") + (f" ({rank[layer.node]})" if layer.node in rank else "")
        lines.append(
            f"| {layer.node} | {layer.op_type} | {layer.precision} | {spread} | "
            f"{_num(layer.output_sqnr_db, '.1f')} | {sensitivity} |"
        )
    return "\n".join(lines) + "\n"


def render_quality_plot(quality: ModelQuality, title: str, path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"int8": "tab:blue", "fp16": "tab:orange", "fp32": "tab:green"}
    finite = [layer.output_sqnr_db for layer in quality.layers if np.isfinite(layer.output_sqnr_db)]
    ceiling = max(finite, default=0.0) + 10  # where a layer with no error at all is drawn
    positions = np.arange(len(quality.layers))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.25 * len(quality.layers) + 2), 4))
    values = [layer.output_sqnr_db if np.isfinite(layer.output_sqnr_db) else ceiling for layer in quality.layers]
    axis.bar(positions, values, color=[colors.get(layer.precision, "tab:gray") for layer in quality.layers])
    sensitivity = [layer.sensitivity_sqnr_db for layer in quality.layers]
    if any(value is not None for value in sensitivity):
        axis.plot(positions, [np.nan if v is None else min(v, ceiling) for v in sensitivity], "k.",
                  label="logits SQNR, layer alone in INT8")  # fmt: skip
        axis.legend(loc="lower left", fontsize=8)
    axis.set_xticks(positions, [layer.node for layer in quality.layers], rotation=90, fontsize=6)
    axis.set_ylabel("output SQNR vs FP32 (dB)")
    axis.set_title(f"{title}: per-layer SQNR (bar colour: " + ", ".join(f"{k} {v[4:]}" for k, v in colors.items())
                   + ")", fontsize=9)  # fmt: skip
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return Path(path)


def write_quality_markdown(quality: ModelQuality, title: str, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, render_quality_markdown(quality, title))
