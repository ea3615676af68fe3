#!/usr/bin/env python3
"""PyTorch against ONNX Runtime on this CPU, for a run's frozen twins, measured side by side.

    python scripts/bench_torch_vs_ort.py RUN_DIR [--out DIR] [--rounds 10] [--seconds 10]
        [--batch-sizes 1,64] [--modes eager,compile] [--norms mimic,bn]

For each twin (RUN_DIR/<norm>/frozen.safetensors, as `mimicnorm-deploy demo` leaves it) builds
torch engines next to the run's ONNX Runtime engines (RUN_DIR/<norm>/engines/torch-<mode>-<precision>):
eager and torch.compile, FP32, and BF16 where this CPU has BF16 arithmetic (AVX512-BF16 / AMX-BF16
on x86, BF16 on ARM). Then times every engine, ONNX Runtime FP32 and INT8 included, in one
interleaved session (engines.bench.bench_engines: rotating rounds, so drift of the machine hits all
engines alike), and reports each engine's median latency and its ratio to ONNX Runtime FP32 of the
same twin with a paired bootstrap 95 % interval (mimicnorm_deploy.latency_stats).

Writes one bench JSON per engine to DIR (default RUN_DIR/bench-torch-vs-ort; `mimicnorm-deploy
compare` reads them) and DIR/summary.md. torch.compile compiles once per batch size during the
warm-up (minutes on a small CPU). Run it alone on the machine: other load skews every figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines import build_engine
from engines.artifacts import atomic_write_text, write_json
from engines.bench import BenchPlan, LatencyResult, bench_engines
from engines.cpu import cpu_features
from engines.errors import UserError
from engines.registry import backend_options
from engines.schemas import BENCH, TORCH_VS_ONNXRUNTIME
from mimicnorm_deploy.latency_stats import median_interval, ratio_of_medians
from mimicnorm_deploy.layout import NORMS_COMPARED, VARIANTS, RunLayout

MODES = ("eager", "compile")
BASELINE = "fp32"  # the ONNX Runtime variant every other engine of a twin is compared with


def torch_variants(modes: list[str], bf16: bool) -> list[tuple[str, str, str]]:
    """(variant name, mode, precision) of the torch engines to build: FP32 always, BF16 where the
    CPU computes in it (elsewhere BF16 is converted to FP32 per op: slower, not a real option)."""
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    return [(f"torch-{mode}-{precision}", mode, precision) for mode in modes for precision in precisions]


def engines_of_run(layout: RunLayout, norms: list[str], modes: list[str], bf16: bool, progress) -> dict:
    """{(norm, variant): engine_dir}: the run's ONNX Runtime engines and torch engines built now."""
    engines = {}
    for norm in norms:
        frozen = layout.frozen(norm)
        if not frozen.is_file():
            raise UserError(f"{frozen}: no frozen model; run 'mimicnorm-deploy demo --out {layout.root}' first")
        for variant in VARIANTS:
            if layout.engine(norm, variant).is_dir():
                engines[(norm, variant)] = layout.engine(norm, variant)
        if (norm, BASELINE) not in engines:
            raise UserError(f"{layout.engine(norm, BASELINE)}: no ONNX Runtime FP32 engine to compare with; "
                            "run the demo first")  # fmt: skip
        for variant, mode, precision in torch_variants(modes, bf16):
            progress(f"[{norm}] building {variant}")
            options = backend_options("torch", device="cpu", mode=mode, precision=precision)
            build_engine(frozen, layout.engine(norm, variant), backend="torch", options=options)
            engines[(norm, variant)] = layout.engine(norm, variant)
    return engines


def summary_rows(keys: list[tuple[str, str]], records: list[dict]) -> list[dict]:
    """Per twin, engine and batch size: the median with its interval and the ratio to ONNX Runtime FP32."""
    by_key = dict(zip(keys, records, strict=True))
    rows = []
    for (norm, variant), record in by_key.items():
        baseline_entries = by_key[(norm, BASELINE)]["latency"]
        baseline = {entry["batch_size"]: LatencyResult.from_dict(entry) for entry in baseline_entries}
        for entry in record["latency"]:
            result = LatencyResult.from_dict(entry)
            base = baseline[result.batch_size]
            paired = result.rounds is not None and base.rounds is not None
            ratio = ratio_of_medians(result.samples_ms, base.samples_ms, rounds_a=result.rounds,
                                     rounds_b=base.rounds, paired=paired)  # fmt: skip
            rows.append({
                "norm": norm, "variant": variant, "batch_size": result.batch_size,
                "median_ms": median_interval(result.samples_ms, result.rounds).to_dict(),
                "ratio_to_onnxruntime_fp32": ratio.to_dict(), "ratio_text": ratio.describe(),
                "peak_rss_bytes": record.get("memory", {}).get("peak_rss_bytes"),
            })  # fmt: skip
    return rows


def render_summary(rows: list[dict], plan: BenchPlan, cpu: str) -> str:
    lines = [
        "# PyTorch vs ONNX Runtime on the CPU", "",
        f"{cpu}; {plan.rounds} interleaved rounds, {plan.duration_s:g} s timed per engine and batch size. "
        "Ratio: median latency / ONNX Runtime FP32's of the same twin, paired bootstrap 95 % interval "
        "(above 1: slower).", "",
        "| twin | engine | batch | median ms [95 % CI] | / ONNX Runtime FP32 | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in sorted(rows, key=lambda r: (r["norm"], r["batch_size"], r["median_ms"]["value"])):
        median = row["median_ms"]
        rss = row["peak_rss_bytes"]
        lines.append(f"| {row['norm']} | {row['variant']} | {row['batch_size']} | {median['value']:.3f} "
                     f"[{median['low']:.3f}, {median['high']:.3f}] | {row['ratio_text']} | "
                     f"{'n/a' if rss is None else f'{rss / 2**20:.0f}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="where the bench JSONs and summary.md go (default RUN_DIR/bench-torch-vs-ort)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per engine and batch, all rounds")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--modes", default=",".join(MODES), help="torch modes: eager, compile or both")
    parser.add_argument("--norms", default=",".join(NORMS_COMPARED))
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        modes = [mode for mode in args.modes.split(",") if mode]
        if not modes or any(mode not in MODES for mode in modes):
            raise UserError(f"--modes {args.modes!r}: choose from {', '.join(MODES)}")
        plan = BenchPlan(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), rounds=args.rounds,
                         duration_s=args.seconds)  # fmt: skip
        layout = RunLayout(Path(args.run_dir))
        out = Path(args.out) if args.out else layout.root / "bench-torch-vs-ort"
        features = cpu_features()
        engines = engines_of_run(layout, args.norms.split(","), modes, features.bf16_arithmetic, progress)
        keys = list(engines)
        records = bench_engines([engines[key] for key in keys], plan, progress=progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for (norm, variant), record in zip(keys, records, strict=True):
        write_json(out / f"{norm}-{variant}.json", *BENCH, record)
    rows = summary_rows(keys, records)
    write_json(out / "summary.json", *TORCH_VS_ONNXRUNTIME, {"rows": rows})
    text = render_summary(rows, plan, features.model_name)
    atomic_write_text(out / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
