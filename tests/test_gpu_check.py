"""scripts/gpu_check.sh: argument handling, time budget, report rendering, and the whole check as a
CPU dry run (its plumbing: every part's process, torchrun with gloo, the torch backend). The real
run needs a GPU and is marked `gpu`."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from script_loader import load_script

from engines.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


gpu_check = load_script("gpu_check")


def test_deadlines_split_the_budget_by_share_over_the_selected_parts():
    deadlines = gpu_check.part_deadlines(1000.0, 400.0, list(gpu_check.PART_NAMES))
    assert list(deadlines) == list(gpu_check.PART_NAMES)
    assert deadlines["cuda_runtime"] == pytest.approx(1400.0)  # the last part ends at the budget
    assert list(deadlines.values()) == sorted(deadlines.values())
    only_two = gpu_check.part_deadlines(0.0, 100.0, ["train_run", "ddp"])
    assert only_two == pytest.approx({"train_run": 50.0, "ddp": 100.0})  # equal shares


def test_parts_fit_the_eight_minutes_with_their_grace():
    assert gpu_check.DEFAULT_BUDGET_S + gpu_check.GRACE_S * len(gpu_check.PARTS) < 8 * 60


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parts", "train_run,warp_drive"], "unknown parts"),
        (["--budget-s", "0"], "--budget-s must be positive"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, argv, message):
    args = gpu_check.parse_args([str(tmp_path / "out"), *argv])
    with pytest.raises(UserError, match=message):
        gpu_check.check_args(args)
    assert not (tmp_path / "out").exists()


def test_an_output_path_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert gpu_check.main([str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a file" in err


def _fake_report():
    """A report as run_check writes it, with made-up figures (a fake, for the renderer only)."""
    def row(norm, process_mib, allocated_mib):
        return {"arch": "resnet18", "norm": norm, "amp": "off", "gpu_process_bytes": process_mib * 2**20,
                "cuda_peak_reserved_bytes": (process_mib - 500) * 2**20,
                "cuda_peak_allocated_bytes": allocated_mib * 2**20, "step_ms_p50": 12.5,
                "activation_bytes": allocated_mib * 2**19}  # fmt: skip

    return {
        "settings": {"device": "cuda"}, "budget_s": 400, "elapsed_s": 321.0,
        "parts": {
            "environment": {"status": "ok", "device_name": "Fake GPU", "torch": "2.x"},
            "train_memory": {"units": [{"status": "ok", "rows": [row("mimic", 900, 600)]},
                                       {"status": "ok", "rows": [row("bn", 1000, 800)]},
                                       {"status": "skipped", "reason": "out of its time budget"}]},
            "cuda_runtime": {"status": "failed", "reason": "RuntimeError: boom"},
        },
    }  # fmt: skip


def test_markdown_gives_the_memory_ratios_next_to_the_paper():
    text = gpu_check.render_markdown(_fake_report())
    table_row = next(line for line in text.splitlines() if line.startswith("| resnet18 |"))
    cells = [cell.strip() for cell in table_row.strip("|").split("|")]
    assert cells[1:3] == ["900 / 400 / 600", "1000 / 500 / 800"]
    assert cells[-4:] == ["0.900", "0.750", "0.750", "-6.5%"]  # process, allocated, activations; paper
    assert "| cuda_runtime | failed | RuntimeError: boom |" in text


def test_a_part_is_as_good_as_its_worst_unit():
    assert gpu_check.part_statuses(_fake_report()) == {
        "environment": "ok", "train_memory": "skipped", "cuda_runtime": "failed"}  # fmt: skip


@pytest.mark.slow
def test_dry_run_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    # A generous budget: the dry run's timings say nothing, and a shared CI machine may be busy.
    completed = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run", "--budget-s", "1200"],
                               capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                               timeout=1500)  # fmt: skip
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert completed.returncode == 0, completed.stdout + completed.stderr + log[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["schema"] == "mimicnorm-deploy/gpu-check"
    statuses = gpu_check.part_statuses(report)
    assert statuses == {"environment": "ok", "train_memory": "ok", "train_run": "ok", "ddp": "ok",
                        "inference": "ok", "cuda_runtime": "skipped"}  # fmt: skip
    parts = report["parts"]
    rows = gpu_check.memory_rows(report)
    assert {(row["norm"], row["amp"]) for row in rows} == {("mimic", "off"), ("mimic", "bf16"), ("bn", "off"),
                                                           ("bn", "bf16")}  # fmt: skip
    assert all(row["activation_bytes"] > 0 for row in rows)
    assert parts["ddp"]["backend"] == "gloo" and parts["ddp"]["wrapped_in"] == "DistributedDataParallel"
    assert parts["train_run"]["loss_decreased"] and parts["ddp"]["all_reduce_ok"]
    inference = parts["inference"]["rows"]
    assert {(row["precision"], row["batch_size"]) for row in inference} == {("fp32", 1), ("fp32", 2), ("bf16", 1),
                                                                             ("bf16", 2)}  # fmt: skip
    assert all(row["p50_ms"] > 0 for row in inference)
    assert "| resnet20 |" in (out / "gpu_check.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or not __import__("torch").cuda.is_available(), reason="needs CUDA"
)
def test_gpu_check_on_this_gpu(tmp_path):
    completed = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--parts", "environment,inference,cuda_runtime",
                                "--budget-s", "150"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert any(row["mode"] == "cuda-graph" for row in report["parts"]["inference"]["rows"])


def test_stand_in_engine_loads_in_the_tensorrt_runner(tmp_path, monkeypatch):
    # The GPU check runs engines/tensorrt's Runner on a stand-in engine; here (no GPU) its manifest
    # and I/O must at least be what that Runner reads. A fake CUDA API answers the device queries.
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check_tensorrt_standin as standin

    from engines.tensorrt import Runner

    class FakeCudaNames:
        name = "cuda-python"

        def device_name(self):
            return "Fake GPU"

        def compute_capability(self):
            return (9, 0)

    standin.write_engine(tmp_path / "engine", FakeCudaNames(), (3, 8, 8), 4, cuda_graph=True)
    runner = Runner(tmp_path / "engine")
    (images,) = runner.inputs
    assert (images.name, images.shape, images.min_shape, images.max_shape) == (
        "images", ("batch", 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))  # fmt: skip
    assert runner.cuda_graph and [meta.name for meta in runner.outputs] == ["logits"]
