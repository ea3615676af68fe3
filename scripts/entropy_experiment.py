#!/usr/bin/env python3
"""Where entropy's tight ranges come from (issue 12, docs/BENCHMARKS.md section 8).

    python scripts/entropy_experiment.py MODEL_DIR [DATA_DIR]

MODEL_DIR holds model.onnx; DATA_DIR (default MODEL_DIR/../../../data, the int8 study's layout)
holds calib.npz and test.npz. On the first 512 calibration images it prints, per tensor, the amax
of MinMax, plain EntropyCalibration2 (global 2048-bin histogram), the same with
pytorch-quantization's batch accumulation (first batch's range, bins added), ONNX Runtime's
128-bin entropy calibrator as Model Optimizer's ONNX path uses it (fed per batch of 32 here;
modelopt feeds one image at a time for a dynamic batch axis), and calibration.thresholds'
entropy (point masses flattened), with the share of values in point masses; then the accuracy
and logits SQNR of each on the first 2,000 test images (per-channel, TensorRT placement, Q/DQ
simulated), plus MinMax with the classifier left in float. Writes MODEL_DIR/entropy_exp.json.
Takes tens of minutes on 2 loaded cores (the KL search runs per tensor, three times).
"""

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization.calibrate import HistogramCalibrater, HistogramCollector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from calibration.data import ArrayCalibrationReader  # noqa: E402
from calibration.metrics import accuracy  # noqa: E402
from calibration.quantize import write_qdq_model  # noqa: E402
from calibration.ranges import calibrate_ranges  # noqa: E402
from calibration.thresholds import AbsHistogram  # noqa: E402
from engines.artifacts import load_image_set  # noqa: E402

model_dir = Path(sys.argv[1])
model = model_dir / "model.onnx"
data = Path(sys.argv[2]) if len(sys.argv) > 2 else model_dir.parent.parent.parent / "data"
calib, _ = load_image_set(data / "calib.npz")
calib = calib[:512]
test, test_labels = load_image_set(data / "test.npz")
test, test_labels = test[:2000], test_labels[:2000]  # the first 2,000 test images: time is short
BATCH = 32


def logits(path, images):
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    n = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {n: images[i : i + 1000]})[0] for i in range(0, len(images), 1000)])


minmax = calibrate_ranges(model, calib, "minmax", batch_size=BATCH)
ours = calibrate_ranges(model, calib, "entropy", batch_size=BATCH)

# One pass collecting: (a) pytorch-quantization growth histograms, (b) ORT 128-bin signed entropy
# collector fed per batch as modelopt does, (c) raw global histograms with 2048 bins (ours), and
# (d) counts of exactly repeated values (spikes).
with tempfile.TemporaryDirectory() as tmp:
    copy = Path(tmp) / "m.onnx"
    onnx.save(onnx.load(model), copy)
    cal = HistogramCalibrater(copy, augmented_model_path=str(Path(tmp) / "aug.onnx"))
    cal.augment_graph()
    cal.create_inference_session()
    names = sorted(cal.tensors_to_calibrate)
    ort128 = HistogramCollector("entropy", False, 128, 128, 99.99, "same")
    pq: dict[str, tuple[np.ndarray, float]] = {}  # counts, width
    spike_share = {}
    reader = ArrayCalibrationReader(calib, cal.infer_session.get_inputs()[0].name, BATCH)
    first = True
    while (feed := reader.get_next()) is not None:
        outs = cal.infer_session.run(names, feed)
        ort128.collect({n: [v] for n, v in zip(names, outs, strict=True)})  # per batch of 32 (modelopt: per image)
        for n, v in zip(names, outs, strict=True):
            a = np.abs(v).ravel()
            m = float(a.max())
            if n not in pq:
                width = m / 2048 if m > 0 else 1.0
                counts = np.zeros(2048, np.int64)
            else:
                counts, width = pq[n]
                need = int(np.ceil(m / width)) if m > 0 else 0
                if need > len(counts):
                    counts = np.concatenate([counts, np.zeros(need - len(counts), np.int64)])
            c, _ = np.histogram(a, bins=len(counts), range=(0, len(counts) * width))
            pq[n] = (counts + c, width)
            if first:
                nz = a[a > 0]
                if nz.size:
                    _, rep = np.unique(nz, return_counts=True)
                    spike_share[n] = float(rep[rep >= 50].sum() / a.size)
        first = False
    ort_thresholds = ort128.compute_collection_result()

from calibration.ranges import _abs_histograms  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    copy = Path(tmp) / "m.onnx"
    onnx.save(onnx.load(model), copy)
    hists = _abs_histograms(copy, ArrayCalibrationReader(calib, "images", BATCH), minmax.max_abs)


from calibration.thresholds import START_BIN, flatten_point_masses, kl_divergences  # noqa: E402


def plain_ec2(h):
    # Without point masses flattened. Since section 8.2, kl_divergences splits levels at fractions of a
    # bin, so between multiples of 128 bins this is no longer the published grouping.
    if h.max_abs == 0 or not h.counts.any():
        return 0.0
    d = kl_divergences(h.counts)
    return float((START_BIN + len(d) - 1 - int(np.argmin(d[::-1]))) * h.bin_width)


despiked_amax, spike_mass, plain_amax = {}, {}, {}
for n, h in hists.items():
    bins, spikes = flatten_point_masses(h.counts)
    spike_mass[n] = float(h.counts[spikes].sum() / max(h.counts[1:].sum(), 1))
    despiked_amax[n] = ours.amax[n]  # calibrate_ranges now flattens point masses
    plain_amax[n] = plain_ec2(h)
for n in ours.unclipped_inputs:
    plain_amax[n] = minmax.amax[n]

pq_amax = {}
for n, (counts, width) in pq.items():
    h = AbsHistogram(counts, width * len(counts))
    pq_amax[n] = plain_ec2(h)
mo_amax = {}
for n, td in ort_thresholds.items():
    lo, hi = float(td[0]), float(td[1])
    mo_amax[n] = max(abs(lo), abs(hi))

rows = []
for n in ours.amax:
    if n not in mo_amax:
        continue
    rows.append((n, minmax.amax[n], plain_amax[n], pq_amax.get(n), mo_amax[n], despiked_amax[n],
                 spike_share.get(n, 0.0), spike_mass.get(n, 0.0)))
print(f"{'tensor':28s} {'minmax':>8s} {'plainEC2':>8s} {'pq':>8s} {'ort128':>8s} {'flat':>8s} plain/ort rep50 spikes")
for n, mm, o, p, mo, d, sp, sm in rows:
    print(f"{n:28s} {mm:8.3f} {o:8.3f} {p:8.3f} {mo:8.3f} {d:8.3f} {o / mo if mo else 0:6.2f} {sp:5.2f} {sm:5.2f}")


REFERENCE = None


def score(amax, tag, exclude=()):
    from calibration.metrics import sqnr_db

    r = replace(ours, amax={n: float(amax.get(n, ours.amax[n])) for n in ours.amax})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.onnx"
        write_qdq_model(model, r, path, per_channel=True, nodes_to_exclude=list(exclude))
        out = logits(path, test)
        acc = accuracy(out, test_labels)
    print(f"{tag}: {100 * acc:.2f}, logits SQNR {sqnr_db(REFERENCE, out):.1f} dB", flush=True)
    return {"accuracy": acc, "logits_sqnr_db": sqnr_db(REFERENCE, out)}


t = time.time()
REFERENCE = logits(model, test)
results = {"fp32": accuracy(REFERENCE, test_labels)}
print(f"fp32 {100 * results['fp32']:.2f}")
results["minmax"] = score(minmax.amax, "minmax")
gemm = [node.name for node in onnx.load(model).graph.node if node.op_type == "Gemm"]
results["minmax-fc-float"] = score(minmax.amax, f"minmax, classifier {gemm} left in float", exclude=gemm)
results["ours-entropy"] = score(plain_amax, "ours entropy (plain EntropyCalibration2)")
results["pq-growth-entropy"] = score(pq_amax, "pytorch-quantization accumulation entropy")
modelopt_like = {n: mo_amax.get(n, ours.amax[n]) for n in ours.amax}
results["ort128-entropy"] = score(modelopt_like, "ORT 128-bin entropy, batch 32 (modelopt's calibrator)")
results["despiked-entropy"] = score(despiked_amax, "ours, point masses flattened (calibration.thresholds now)")
json.dump({"results": results, "rows": rows}, open(model_dir / "entropy_exp.json", "w"), indent=1)
print(f"{time.time() - t:.0f}s")
