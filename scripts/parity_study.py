#!/usr/bin/env python3
"""The parity study: FP32 test accuracy against schedule length, MimicNorm vs BN vs BN-revisited.

    python scripts/parity_study.py [--out runs/parity] [--archs resnet20,mobilenetv2_050]
        [--norms mimic,bn,bn-revisited] [--epochs 1.8,5,10,20] [--seeds 0,1] [--augment]
        [--warmup-epochs 0.3] [--lr 0.1] [--dataset fashion-mnist] [--data-dir DIR] [--summary-only]
        [--record docs/parity_runs.json | --from-record docs/parity_runs.json [--cpu KIND]]

Every point is its own run: a cosine schedule's accuracy after 5 of 20 epochs says nothing about a
5-epoch schedule. The recipe is the study's (scripts/int8_study.py, docs/BENCHMARKS.md section 4):
Fashion-MNIST padded to 32x32, batch 128, SGD lr 0.1 momentum 0.9, weight decay 5e-4 on every
parameter, 0.3-epoch linear warm-up then cosine, no augmentation unless --augment; only the
length, the norm and the seed change. The authors' recipe differs from it in the warm-up (2 epochs
of their 150), the batch (256) and the step schedule; their treatment of biases and residual
scalars (the same lr and weight decay as the weights) and the logits BatchNorm1d's momentum (0.1)
are already the study's. `--warmup-epochs 2 --out runs/parity-warmup2` runs their warm-up, `--lr 0.2
--out runs/parity-lr0.2` another peak learning rate (docs/BENCHMARKS.md section 3.4). The
runs go shortest first, and within a length one seed of every arch and norm before the next
seed, so a partial study still gives whole points.

Resumable: a run whose `train_report.json` exists is done and only read; a run with a
`train_state.pt` continues exactly where its last finished epoch left it (`train --resume`). A
run directory whose recorded recipe differs from the one asked is refused, not mixed in. So a
study can be stopped at any time (Ctrl-C loses at most the epoch in progress) and started again
with the same command. `--summary-only` trains nothing and tabulates what is there.

Results: `<out>/parity.json` (every finished run: final test accuracy, the best epoch's, per-epoch
test and training accuracies; per arch the pooled seed-to-seed sd), `<out>/parity.md` (per point:
mean over seeds, each seed, and each norm minus BN with a 95 % interval; then the last epoch's
training accuracy) and `<out>/parity.png` (the accuracy-vs-length curves), rewritten after every run.

Kept across machines: each run directory records the CPU kind it trains on (`host.json`;
engines.cpu.cpu_kind), and a run is only resumed on that kind, since CPU training is not
bit-reproducible across micro-architectures. `--record docs/parity_runs.json` merges every finished
run (recipe, CPU kind, torch, accuracies) into a file kept in the repository, so a study that takes
longer than a machine lives grows run by run; `--from-record docs/parity_runs.json` tabulates from
that file instead of run directories, one CPU kind at a time (`--cpu`, default this machine's) or
several pooled seed by seed (`--cpu "KIND A;KIND B"`: a seed's runs at a length come from one kind,
so a kind's offset cancels from a difference; see rows_from_record).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.artifacts import atomic_path, atomic_write_text, read_json, write_json  # noqa: E402
from engines.errors import UserError  # noqa: E402
from engines.schemas import PARITY_RECORD, PARITY_RUN_HOST, PARITY_STUDY, TRAIN_REPORT  # noqa: E402

# The fields of a run's recorded config that define the recipe; a run only joins a point if all match.
RECIPE_FIELDS = ("arch", "norm", "epochs", "seed", "batch_size", "lr", "momentum", "weight_decay",
                 "warmup_epochs", "schedule", "augment", "max_steps_per_epoch")  # fmt: skip
IDENTITY_FIELDS = ("arch", "norm", "epochs", "seed")  # which point a run is; the other recipe fields: how trained
REFERENCE_NORM = "bn"
HOST_FILE = "host.json"


def run_dir(out: Path, arch: str, norm: str, epochs: float, seed: int) -> Path:
    return out / arch / norm / f"epochs{epochs:g}" / f"seed{seed}"


def train_config(args: argparse.Namespace, arch: str, norm: str, epochs: float, seed: int):
    from mimicnorm_deploy.training.train import TrainConfig

    return TrainConfig(arch=arch, norm=norm, epochs=epochs, seed=seed, augment=args.augment, lr=args.lr,
                       warmup_epochs=args.warmup_epochs, max_steps_per_epoch=args.max_steps_per_epoch)  # fmt: skip


def train_report(directory: Path) -> dict | None:
    """A finished run's train_report.json, or None while the run is unfinished."""
    from mimicnorm_deploy.training.train import TRAIN_REPORT_FILE

    report = directory / TRAIN_REPORT_FILE
    return read_json(report, *TRAIN_REPORT) if report.is_file() else None


def check_recipe(directory: Path, config) -> None:
    """Refuse a finished run trained with another recipe (an unfinished one is checked by resume)."""
    report = train_report(directory)
    if report is None:
        return
    asked = asdict(config)
    recorded = report["config"]
    differing = [f"{f} {recorded.get(f)!r} (asked {asked[f]!r})" for f in RECIPE_FIELDS if recorded.get(f) != asked[f]]
    if differing:
        raise UserError(f"{directory} was trained with another recipe: {', '.join(differing)}; "
                        f"pass another --out or remove that run")  # fmt: skip


def check_names(archs: list[str], norms: list[str]) -> None:
    """Fail on a misspelt arch or norm now, not hours into the study."""
    from mimicnorm_deploy.training.layers import NORMS
    from mimicnorm_deploy.training.models.registry import list_models

    unknown = [a for a in archs if a not in list_models()] + [n for n in norms if n not in NORMS]
    if unknown:
        raise UserError(f"unknown arch or norm: {', '.join(unknown)}; see 'mimicnorm-deploy models' "
                        f"and the norms {', '.join(NORMS)}")  # fmt: skip


def this_host() -> dict:
    import torch

    from engines.cpu import cpu_kind

    return {"cpu": cpu_kind(), "torch": torch.__version__}


def check_host(directory: Path, host: dict) -> None:
    """Record the CPU kind a new run trains on; refuse to resume a run started on another kind
    (its epochs would mix two kinds' arithmetic)."""
    path = directory / HOST_FILE
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        write_json(path, *PARITY_RUN_HOST, host)
        return
    started_on = read_json(path, *PARITY_RUN_HOST)
    if (started_on["cpu"], started_on["torch"]) != (host["cpu"], host["torch"]):
        raise UserError(f"{directory} started on {started_on['cpu']} with torch {started_on['torch']}, this "
                        f"machine is {host['cpu']} with torch {host['torch']}; "
                        "finish it there or pass another --out")  # fmt: skip


def train_missing(args: argparse.Namespace, out: Path, points: list[tuple[str, str, float, int]]) -> None:
    from mimicnorm_deploy.stages import train_stage
    from mimicnorm_deploy.training.data import load_dataset
    from mimicnorm_deploy.training.train import TRAIN_REPORT_FILE, TRAIN_STATE_FILE

    check_names(args.archs, args.norms)
    dataset = load_dataset(args.dataset, args.data_dir)
    host = this_host()
    for number, (arch, norm, epochs, seed) in enumerate(points, 1):
        directory = run_dir(out, arch, norm, epochs, seed)
        config = train_config(args, arch, norm, epochs, seed)
        check_recipe(directory, config)
        tag = f"[{number}/{len(points)} {arch} {norm} {epochs:g} epochs seed {seed}]"
        if (directory / TRAIN_REPORT_FILE).is_file():
            print(f"{tag} done before, read", flush=True)
            continue
        check_host(directory, host)
        resume = (directory / TRAIN_STATE_FILE).is_file()
        print(f"{tag} {'resumed' if resume else 'started'}", flush=True)
        started = time.perf_counter()
        train_stage(config, dataset, directory, lambda m, tag=tag: print(f"{tag} {m}", flush=True), resume=resume)
        print(f"{tag} finished in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        write_results(args, out, points)


def run_result(directory: Path) -> dict | None:
    """A finished run's accuracies, or None while it is unfinished."""
    report = train_report(directory)
    return None if report is None else accuracies(report)


def accuracies(report: dict) -> dict:
    return {"final_accuracy": report["final_test_accuracy"], "best_accuracy": report["best_test_accuracy"],
            "epoch_accuracies": [epoch["test_accuracy"] for epoch in report["epochs"]],
            "epoch_train_accuracies": [epoch["train_accuracy"] for epoch in report["epochs"]]}  # fmt: skip


def collect(args: argparse.Namespace, out: Path, points: list[tuple[str, str, float, int]]) -> list[dict]:
    """The finished runs of `points`, each checked to have the recipe asked (none is mixed in)."""
    rows = []
    for arch, norm, epochs, seed in points:
        directory = run_dir(out, arch, norm, epochs, seed)
        check_recipe(directory, train_config(args, arch, norm, epochs, seed))
        result = run_result(directory)
        if result is not None:
            rows.append({"arch": arch, "norm": norm, "epochs": epochs, "seed": seed, **result})
    return rows


def recipe_of(config: dict, dataset: str) -> dict:
    """How a run was trained, apart from which point it is."""
    return {**{f: config[f] for f in RECIPE_FIELDS if f not in IDENTITY_FIELDS}, "dataset": dataset}


def record_key(run: dict) -> tuple:
    return (*(run[f] for f in IDENTITY_FIELDS), json.dumps(run["recipe"], sort_keys=True), run["cpu"])


def read_record(path: Path) -> list[dict]:
    return read_json(path, *PARITY_RECORD)["runs"] if path.is_file() else []


def record_runs(args: argparse.Namespace, out: Path, points: list[tuple[str, str, float, int]], path: Path) -> int:
    """Merge every finished run of `points` under `out` into the record file (a run recorded
    before, same point, recipe and CPU kind, is replaced); returns how many runs were merged."""
    merged = {record_key(run): run for run in read_record(path)}
    count = 0
    for arch, norm, epochs, seed in points:
        directory = run_dir(out, arch, norm, epochs, seed)
        report = train_report(directory)
        if report is None:
            continue
        if not (directory / HOST_FILE).is_file():
            raise UserError(f"{directory} has no {HOST_FILE}, so the CPU it trained on is unknown (trained before "
                            f"the driver recorded it); leave it out of --record or retrain it")  # fmt: skip
        host = read_json(directory / HOST_FILE, *PARITY_RUN_HOST)
        run = {"arch": arch, "norm": norm, "epochs": epochs, "seed": seed,
               "recipe": recipe_of(report["config"], args.dataset), "cpu": host["cpu"], "torch": host["torch"],
               "train_minutes": round(sum(e["epoch_seconds"] for e in report["epochs"]) / 60, 1),
               **accuracies(report)}  # fmt: skip
        merged[record_key(run)] = run
        count += 1
    runs = [merged[key] for key in sorted(merged)]
    write_json(path, *PARITY_RECORD, {"runs": runs})
    return count


def rows_from_record(args: argparse.Namespace, points: list[tuple[str, str, float, int]]) -> list[dict]:
    """The recorded runs of `points` trained with the asked recipe on the CPU kinds `args.cpus`.

    With several kinds, a seed's runs at one length (a block: the same initialization and data
    order for every norm) all come from one kind, the first listed among those holding the most of
    the block's runs: a block split across kinds would put a kind's offset into a norm's
    difference, and one seed trained on two kinds is one draw, not two."""
    runs = read_json(args.from_record, *PARITY_RECORD)["runs"]
    wanted = set(points)
    recipe = recipe_of(asdict(train_config(args, *points[0])), args.dataset)
    same_recipe = [run for run in runs if run["recipe"] == recipe and tuple(run[f] for f in IDENTITY_FIELDS) in wanted]
    fields = (*IDENTITY_FIELDS, "cpu", "final_accuracy", "best_accuracy", "epoch_accuracies", "epoch_train_accuracies")
    mine = [{f: run[f] for f in fields} for run in same_recipe if run["cpu"] in args.cpus]
    if same_recipe and not mine:
        kinds = "; ".join(sorted({run["cpu"] for run in same_recipe}))
        raise UserError(f"{args.from_record} holds no run of these points on {'; '.join(args.cpus)}; "
                        f"pass --cpu with one or more of (separated by ';'): {kinds}")  # fmt: skip
    blocks: dict[tuple, list[dict]] = {}
    for row in mine:
        blocks.setdefault((row["arch"], row["epochs"], row["seed"]), []).append(row)
    rows = []
    for block in blocks.values():
        held = [sum(row["cpu"] == cpu for row in block) for cpu in args.cpus]
        kind = args.cpus[held.index(max(held))]  # index(): the first listed among the most held
        rows += [row for row in block if row["cpu"] == kind]
    return rows


def t_quantile_975(df: int) -> float:
    """Student's t 97.5 % quantile: exact for 1 and 2 degrees of freedom, else the Cornish-Fisher
    expansion around the normal quantile (within 0.004 of the tables from 3 df on)."""
    if df == 1:
        return math.tan(math.pi * 0.475)
    if df == 2:
        return 0.95 / math.sqrt(2 * 0.975 * 0.025)
    z = statistics.NormalDist().inv_cdf(0.975)
    terms = [(z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]  # fmt: skip
    return z + sum(term / df**power for power, term in enumerate(terms, start=1))


def pooled_seed_sd(cells: list[list[float]]) -> tuple[float, int] | None:
    """The seed-to-seed standard deviation pooled over cells (one cell: one norm at one length) and
    its degrees of freedom; None without a cell of two seeds. Pooling assumes the seeds scatter
    about as much at every point of an arch: two seeds give one point's own spread too roughly to
    use alone."""
    df = sum(len(cell) - 1 for cell in cells if len(cell) > 1)
    if df == 0:
        return None
    squares = sum((len(cell) - 1) * statistics.variance(cell) for cell in cells if len(cell) > 1)
    return math.sqrt(squares / df), df


def difference_cell(values: list[float], reference: list[float], noise: tuple[float, int] | None) -> str:
    """Mean minus the reference's mean, ± the 95 % half-width from the pooled seed noise; bold
    where the interval leaves out zero."""
    difference = statistics.mean(values) - statistics.mean(reference)
    if noise is None:
        return f"{difference:+.2f}"
    sd, df = noise
    half_width = t_quantile_975(df) * sd * math.sqrt(1 / len(values) + 1 / len(reference))
    cell = f"{difference:+.2f} ± {half_width:.2f}"
    return f"**{cell}**" if abs(difference) > half_width else cell


def final_accuracy(row: dict) -> float:
    return row["final_accuracy"]


def points_by_norm(rows: list[dict], value=final_accuracy) -> dict[tuple[str, float], dict[str, dict[int, float]]]:
    """(arch, epochs) -> norm -> seed -> `value` of the run in % (default: its final test accuracy)."""
    by_point: dict[tuple[str, float], dict[str, dict[int, float]]] = {}
    for row in rows:
        seeds = by_point.setdefault((row["arch"], row["epochs"]), {}).setdefault(row["norm"], {})
        seeds[row["seed"]] = 100 * value(row)
    return by_point


def norm_order(norms) -> list[str]:
    """MimicNorm first, then the others by name: the column and legend order of every output."""
    return sorted(norms, key=lambda n: (n != "mimic", n))


def seed_noise(by_point: dict[tuple[str, float], dict[str, dict[int, float]]]) -> dict[str, tuple[float, int] | None]:
    archs = {arch for arch, _ in by_point}
    return {arch: pooled_seed_sd([list(seeds.values()) for (a, _), per_norm in by_point.items() if a == arch
                                  for seeds in per_norm.values()]) for arch in sorted(archs)}  # fmt: skip


def describe_noise(arch: str, noise: tuple[float, int] | None) -> str:
    return f"{arch}: no point with two seeds" if noise is None else f"{arch}: sd {noise[0]:.2f} points, {noise[1]} df"


def kind_labels(rows: list[dict]) -> dict[str, str]:
    """CPU kind -> A, B, ... when the rows come from more than one kind (pooled from a record), else {}."""
    kinds = sorted({row["cpu"] for row in rows if "cpu" in row})
    return {kind: chr(ord("A") + i) for i, kind in enumerate(kinds)} if len(kinds) > 1 else {}


def summarize(rows: list[dict]) -> str:
    """Per arch and length: each norm's mean final accuracy over seeds (each seed's in brackets,
    with its CPU kind's letter when the rows pool several) and its difference to BN's mean with a
    95 % interval, for the points with a finished run."""
    by_point = points_by_norm(rows)
    noise = seed_noise(by_point)
    norms = norm_order({row["norm"] for row in rows})
    labels = kind_labels(rows)
    seed_kind = {(row["arch"], row["epochs"], row["seed"]): f"/{labels[row['cpu']]}" for row in rows if labels}
    header = ["arch", "epochs", *[f"{n} %" for n in norms], *[f"{n} - {REFERENCE_NORM}" for n in norms
                                                                 if n != REFERENCE_NORM]]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (arch, epochs), per_norm in sorted(by_point.items()):
        cells = [arch, f"{epochs:g}"]
        for norm in norms:
            seeds = per_norm.get(norm, {})
            each = ", ".join(f"s{k}{seed_kind.get((arch, epochs, k), '')} {v:.2f}" for k, v in sorted(seeds.items()))
            cells.append(f"{statistics.mean(seeds.values()):.2f} ({each})" if seeds else "")
        for norm in norms:
            if norm == REFERENCE_NORM:
                continue
            both = norm in per_norm and REFERENCE_NORM in per_norm
            cells.append(difference_cell(list(per_norm[norm].values()), list(per_norm[REFERENCE_NORM].values()),
                                         noise[arch]) if both else "")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    spread = "; ".join(describe_noise(arch, arch_noise) for arch, arch_noise in noise.items())
    note = ("Final test accuracy % on the test split, mean over seeds (each seed in brackets: s0 = seed 0). "
            "Each difference is of the means, ± the half-width of its 95 % interval (Student t) from the "
            f"seed-to-seed standard deviation pooled over every point of the arch ({spread}); bold where the "
            "interval leaves out zero.")  # fmt: skip
    if labels:
        note += (" Seeds pooled from CPU kinds " + "; ".join(f"{label} = {kind}" for kind, label in labels.items())
                 + " (s1/B: seed 1, trained on B). A seed's runs at a length are all of one kind, so a kind's "
                 "offset cancels from a difference where both norms have the same seeds; the pooled sd "
                 "includes it.")  # fmt: skip
    return "\n".join(lines) + "\n\n" + note + "\n"


def summarize_fit(rows: list[dict]) -> str:
    """Per arch and length: each norm's training accuracy over the last epoch, mean over seeds. Set
    beside the test accuracies it tells underfitting (both lower) from overfitting."""
    fit = points_by_norm(rows, value=lambda row: row["epoch_train_accuracies"][-1])
    norms = norm_order({row["norm"] for row in rows})
    lines = ["| arch | epochs | " + " | ".join(f"{n} training %" for n in norms) + " |",
             "|" + "---|" * (2 + len(norms))]  # fmt: skip
    for (arch, epochs), per_norm in sorted(fit.items()):
        cells = [f"{statistics.mean(per_norm[n].values()):.2f}" if n in per_norm else "" for n in norms]
        lines.append(f"| {arch} | {epochs:g} | " + " | ".join(cells) + " |")
    note = ("Training accuracy over the last epoch as it ran (mean over seeds; without augmentation the same "
            "images every epoch).")  # fmt: skip
    return "\n".join(lines) + "\n\n" + note + "\n"


def curves(rows: list[dict]) -> dict[str, dict[str, list[tuple[float, float, list[float]]]]]:
    """arch -> norm -> (schedule length, mean final test accuracy %, each seed's) by length."""
    by_arch: dict[str, dict[str, list[tuple[float, float, list[float]]]]] = {}
    for (arch, epochs), per_norm in sorted(points_by_norm(rows).items()):
        for norm, seeds in per_norm.items():
            values = [seeds[k] for k in sorted(seeds)]
            by_arch.setdefault(arch, {}).setdefault(norm, []).append((epochs, statistics.mean(values), values))
    return by_arch


def plot_curves(rows: list[dict], path: Path) -> None:
    """Final test accuracy against schedule length, one panel per arch: a line through each norm's
    seed means, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_arch = curves(rows)
    figure, axes = plt.subplots(1, len(by_arch), figsize=(5 * len(by_arch), 4), squeeze=False)
    for axis, (arch, per_norm) in zip(axes[0], by_arch.items(), strict=True):
        for norm in norm_order(per_norm):
            points = per_norm[norm]
            line = axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=norm)[0]
            for epochs, _, seeds in points:
                axis.plot([epochs] * len(seeds), seeds, ".", color=line.get_color(), alpha=0.5)
        axis.set_xscale("log")
        lengths = sorted({p[0] for points in per_norm.values() for p in points})
        axis.set_xticks(lengths, [f"{e:g}" for e in lengths])
        axis.minorticks_off()
        axis.set_xlabel("schedule length (epochs)")
        axis.set_ylabel("final test accuracy %")
        axis.set_title(arch, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_results(args: argparse.Namespace, out: Path, points: list[tuple[str, str, float, int]]) -> str:
    rows = rows_from_record(args, points) if args.from_record else collect(args, out, points)
    table = summarize(rows) + ("\n" + summarize_fit(rows) if rows else "")
    noise = {arch: None if sd_df is None else {"sd_points": sd_df[0], "df": sd_df[1]}
             for arch, sd_df in seed_noise(points_by_norm(rows)).items()}  # fmt: skip
    write_json(out / "parity.json", *PARITY_STUDY, {"rows": rows, "seed_noise": noise})
    atomic_write_text(out / "parity.md", table)
    if rows:
        plot_curves(rows, out / "parity.png")
    if args.record:
        count = record_runs(args, out, points, args.record)
        print(f"recorded {count} finished run(s) in {args.record}", flush=True)
    return table


def study_points(args: argparse.Namespace) -> list[tuple[str, str, float, int]]:
    """Shortest schedule first; within it, seed by seed, every arch and norm."""
    return [(arch, norm, epochs, seed) for epochs in sorted(args.epochs) for seed in args.seeds
            for arch in args.archs for norm in args.norms]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/parity")
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, cifar10, cifar100 or synthetic "
                        "(a tiny set for checks); pass another --out per data set")  # fmt: skip
    parser.add_argument("--data-dir", help="the data set's directory (default for Fashion-MNIST: Debian's "
                        "dataset-fashion-mnist)")  # fmt: skip
    parser.add_argument("--archs", default="resnet20,mobilenetv2_050")
    parser.add_argument("--norms", default="mimic,bn,bn-revisited")
    parser.add_argument("--epochs", default="1.8,5,10,20", help="schedule lengths, comma-separated")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--augment", action="store_true", help="random crop + flip (off, as in the INT8 study)")
    parser.add_argument("--warmup-epochs", type=float, default=0.3, help="linear warm-up (default 0.3, the "
                        "study's; the authors' CIFAR recipe: 2 epochs); pass another --out per warm-up")  # fmt: skip
    parser.add_argument("--lr", type=float, default=0.1, help="the peak learning rate of SGD (default 0.1, the "
                        "study's); pass another --out per lr")  # fmt: skip
    parser.add_argument("--max-steps-per-epoch", type=int, default=0, help="0 = the whole training split "
                        "(fewer: a quick look, not the study)")  # fmt: skip
    parser.add_argument("--summary-only", action="store_true", help="train nothing; tabulate the finished runs")
    parser.add_argument("--record", type=Path, help="merge every finished run (recipe, CPU kind, accuracies) into "
                        "this file, e.g. docs/parity_runs.json, the study's record kept in the repository")  # fmt: skip
    parser.add_argument("--from-record", type=Path, help="train nothing; tabulate the runs of this record file "
                        "instead of the run directories under --out")  # fmt: skip
    parser.add_argument("--cpu", dest="cpus", type=lambda kinds: [kind.strip() for kind in kinds.split(";")],
                        help="with --from-record: the CPU kind whose runs to tabulate (default: this machine's, "
                        "e.g. 'AMD EPYC, x86_64 family 25 model 1, avx2'), or several separated by "
                        "';' to pool them seed by seed (each seed's runs at a length from one kind)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        args.epochs = [float(e) for e in args.epochs.split(",")]
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error("--epochs and --seeds take comma-separated numbers, e.g. --epochs 1.8,5 --seeds 0,1")
    if any(e <= 0 for e in args.epochs) or args.lr <= 0 or any(s < 0 for s in args.seeds) or args.warmup_epochs < 0:
        parser.error("--epochs and --lr must be positive, --seeds and --warmup-epochs non-negative")
    args.archs, args.norms = args.archs.split(","), args.norms.split(",")
    if args.from_record and args.record:
        parser.error("--from-record reads a record and --record writes one: pass one of them")
    if args.cpus and not args.from_record:
        parser.error("--cpu chooses whose recorded runs to tabulate: pass it with --from-record")
    if args.from_record and not args.cpus:
        from engines.cpu import cpu_kind

        args.cpus = [cpu_kind()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    points = study_points(args)
    try:
        if not (args.summary_only or args.from_record):
            train_missing(args, out, points)
        table = write_results(args, out, points)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"written {out / 'parity.md'}, {out / 'parity.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
