"""The Jetson side on this machine: JetPack's outputs parsed, the device scripts run against FAKE tools
(tests/fakes/jetson: recorded nvpmodel/jetson_clocks/tegrastats outputs, a fake sysfs tree; tests/fakes/bin:
a fake trtexec), and the whole trip: bundle -> run.sh -> results archive -> unbundle -> report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_tiny_resnet, random_images

from engines.artifacts import save_image_set, write_json
from engines.errors import UserError
from engines.jetson import attach_power, cuda_version, parse_jetson_clocks, power_summary, sysfs_clocks
from engines.schemas import TRAIN_REPORT
from mimicnorm_deploy.cli import main
from mimicnorm_deploy.layout import RunLayout, variant_name

REPO = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).parent / "fakes"
JETSON = FAKES / "jetson"
OUTPUTS = JETSON / "outputs"
NX_VARIANT = variant_name("int8-per-channel", "jetson-orin-nx")


def test_jetson_clocks_show_says_whether_clocks_are_locked():
    locked = parse_jetson_clocks((OUTPUTS / "jetson_clocks-show.txt").read_text())
    assert locked == {"gpu_min_hz": 918000000, "gpu_max_hz": 918000000, "gpu_current_hz": 918000000,
                      "emc_min_hz": 204000000, "emc_max_hz": 3199000000, "emc_current_hz": 3199000000,
                      "emc_override": True, "clocks_locked": True}  # fmt: skip
    show = (OUTPUTS / "jetson_clocks-show.txt").read_text()
    unlocked = show.replace("GPU MinFreq=918000000", "GPU MinFreq=306000000")
    assert parse_jetson_clocks(unlocked)["clocks_locked"] is False
    assert parse_jetson_clocks("Please run as root\n") == {}


def test_sysfs_clocks_and_cuda_version_from_the_fake_tree():
    root = JETSON / "root"
    assert sysfs_clocks(root) == {"gpu_cur_freq_hz": 918000000, "gpu_min_freq_hz": 918000000,
                                  "gpu_max_freq_hz": 918000000, "gpu_devfreq": "17000000.gpu",
                                  "emc_rate_hz": 3199000000}  # fmt: skip
    assert cuda_version(root) == "12.2.140"
    assert sysfs_clocks(JETSON / "bin") == {} and cuda_version(JETSON / "bin") is None


def test_tegrastats_power_and_energy_per_image():
    lines = (OUTPUTS / "tegrastats.txt").read_text().splitlines() + ["a line without rails"]
    summary = power_summary(lines)
    assert summary["samples"] == 3
    assert summary["mean_power_mw"] == {"VDD_CPU_GPU_CV": 4450.0, "VDD_IN": 10000.0, "VDD_SOC": 2120.0}
    ram_and_load = (summary["ram_used_mb_max"], summary["ram_total_mb"], summary["gpu_load_percent_mean"])
    assert ram_and_load == (3116, 15655, 89.0)
    # JetPack 4's layout (no mW unit, POM_ rails on a Nano) still parses
    assert power_summary(["RAM 1180/3965MB CPU [30%@1036] GR3D_FREQ 0%@76 POM_5V_IN 4520/4680"])["mean_power_mw"] == {
        "POM_5V_IN": 4520.0}
    record = {"latency": [{"batch_size": 1, "throughput_ips": 2000.0}, {"batch_size": 64, "throughput_ips": 8000.0}]}
    attach_power(record, 64, lines, "t.log")
    assert record["latency"][1]["power"]["energy_per_image_mj"] == pytest.approx(10000 / 8000)  # mW / (img/s)
    assert "power" not in record["latency"][0]
    with pytest.raises(UserError, match="no batch 8"):
        attach_power(record, 8, lines, "t.log")
    with pytest.raises(UserError, match="no tegrastats sample with power rails"):
        attach_power(record, 1, ["RAM 1/2MB"], "t.log")


def test_fingerprint_reads_the_jetson_through_its_overrides(monkeypatch):
    from engines.fingerprint import environment_fingerprint, jetson_info

    monkeypatch.setenv("MIMICNORM_DEVICE_ROOT", str(JETSON / "root"))
    monkeypatch.setenv("NVPMODEL", str(JETSON / "bin" / "nvpmodel"))
    monkeypatch.setenv("JETSON_CLOCKS", str(JETSON / "bin" / "jetson_clocks"))
    info = jetson_info()
    facts = (info["l4t"], info["cuda"], info["power_mode"], info["clocks_locked"])
    assert facts == ("36.3.0", "12.2.140", "MAXN", True)
    assert (info["gpu_cur_freq_hz"], info["emc_rate_hz"], info["emc_current_hz"]) == (918000000, 3199000000, 3199000000)
    assert environment_fingerprint()["jetson"] == info
    monkeypatch.setenv("JETSON_CLOCKS", "false")  # not root: jetson_clocks fails, its facts are left out
    assert "clocks_locked" not in jetson_info() and jetson_info()["power_mode"] == "MAXN"
    monkeypatch.setenv("MIMICNORM_DEVICE_ROOT", str(JETSON / "bin"))
    assert jetson_info() == {}


def _setup(env_extra, *args):
    env = {"PATH": os.environ["PATH"], "PYTHON": sys.executable, **env_extra}
    return subprocess.run(["bash", str(REPO / "scripts" / "jetson" / "setup.sh"), *args], capture_output=True,
                          text=True, env=env, check=False)  # fmt: skip


def test_setup_checks_the_release_tensorrt_and_python(tmp_path):
    fake = {"NV_TEGRA_RELEASE": str(JETSON / "root" / "etc" / "nv_tegra_release"),
            "PYTHONPATH": str(JETSON / "python")}  # fmt: skip
    done = _setup(fake, "--check")
    python = "{}.{}".format(*sys.version_info[:2])
    assert done.returncode == 0 and done.stdout == f"L4T 36.3.0, TensorRT 10.3.0, Python {python}\n"
    refused = _setup({**fake, "NV_TEGRA_RELEASE": str(tmp_path / "absent")}, "--check")
    assert refused.returncode == 2 and "this is not a Jetson" in refused.stderr and not refused.stdout
    old = tmp_path / "nv_tegra_release"
    old.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    refused = _setup({**fake, "NV_TEGRA_RELEASE": str(old)}, "--check")
    assert refused.returncode == 2 and "L4T 35.4.1 is JetPack 5 or older" in refused.stderr
    refused = _setup({"NV_TEGRA_RELEASE": fake["NV_TEGRA_RELEASE"]}, "--check")  # no tensorrt module
    assert refused.returncode == 2 and "TensorRT's Python bindings are missing" in refused.stderr


# --- the whole trip ---------------------------------------------------------------------------


def _train_report(path):
    write_json(path, *TRAIN_REPORT, {
        "config": {"arch": "tiny", "epochs": 1}, "final_test_accuracy": 0.5, "best_test_accuracy": 0.5,
        "activation_memory": {"bytes": 1024, "batch_size": 8}, "mean_step_ms": 1.0,
        "step_ms_percentiles": {"p10": 1.0, "p50": 1.0, "p90": 1.0},
    })  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run as the workstation leaves it: FP32 ONNX, TensorRT calibration (Q/DQ, cache, FP16) for a
    Jetson, and a CPU engine benchmarked here."""
    from engines.bench import BenchPlan
    from mimicnorm_deploy.stages import CalibrateOptions, bench_stage, build_stage, calibrate_stage

    layout = RunLayout(tmp_path_factory.mktemp("run"))
    images = (random_images(32) * 255).clip(0, 255).astype(np.uint8)
    save_image_set(layout.calibration_set, images, np.arange(32) % 3, 1 / 255)
    save_image_set(layout.test_set, images[:16], np.arange(16) % 3, 1 / 255)
    model_dir = layout.model_dir("mimic")
    model_dir.mkdir(parents=True)
    make_tiny_resnet(layout.onnx("mimic"), size=8)
    _train_report(layout.train_report("mimic"))
    cache = layout.tensorrt_cache("mimic", NX_VARIANT)
    options = CalibrateOptions(per_channel=True, target="jetson-orin-nx", trt_cache=str(cache),
                               fp16=str(model_dir / "model.fp16.onnx"))  # fmt: skip
    calibrate_stage(layout.onnx("mimic"), layout.calibration_set, layout.onnx("mimic", NX_VARIANT), options)
    build_stage(layout.onnx("mimic"), layout.engine("mimic", "fp32"))
    bench_stage([layout.engine("mimic", "fp32")], [layout.bench("mimic", "fp32")],
                plan=BenchPlan(batch_sizes=(1, 8), duration_s=0.1))
    return layout


def _device_env(tmp_path):
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(FAKES / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PYTHONPATH": str(REPO),
        "MIMICNORM": f"{sys.executable} -m mimicnorm_deploy",
        "TRTEXEC": str(FAKES / "bin" / "trtexec"),
        "TEGRASTATS": str(JETSON / "bin" / "tegrastats"),
        "NVPMODEL": str(JETSON / "bin" / "nvpmodel"),
        "JETSON_CLOCKS": str(JETSON / "bin" / "jetson_clocks"),
        "MIMICNORM_DEVICE_ROOT": str(JETSON / "root"),
        "TRT_VERSION": "10.3",
        "POWER_SECONDS": "1",
    }


@pytest.mark.slow
def test_bundle_device_run_results_and_report(run_dir, tmp_path):
    bundle = tmp_path / "nx.tar.gz"
    assert main(["bundle", str(run_dir.root), "--target", "jetson-orin-nx", "--out", str(bundle), "--test-set"]) == 0
    device = tmp_path / "device"
    device.mkdir()
    done = subprocess.run(["bash", str(REPO / "scripts" / "jetson" / "run.sh"), str(bundle), "--trtexec",
                           "--out", "results", "--batch-sizes", "1,8"], cwd=device, env=_device_env(tmp_path),
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (device / "results" / "summary.md").read_text()
    assert f"| mimic/{NX_VARIANT} | int8 | trtexec | 8 |" in summary
    assert "power_mode MAXN" in summary and "clocks_locked True" in summary  # from the fingerprint

    # on the workstation: check and place the results, then report
    assert main(["unbundle", str(device / "results.tar.gz"), "--out", str(run_dir.root / "devices" /
                                                                         "jetson-orin-nx")]) == 0  # fmt: skip
    bench = json.loads((run_dir.root / "devices" / "jetson-orin-nx" / "mimic" / "bench" / f"{NX_VARIANT}.json")
                       .read_text())  # fmt: skip
    assert bench["engine"]["backend_version"] == "10.3.0" and bench["engine"]["target"] == "jetson-orin-nx"
    entry = bench["latency"][1]
    assert entry["timing_source"] == "trtexec" and entry["power"]["mean_power_mw"]["VDD_IN"] > 0
    assert entry["power"]["energy_per_image_mj"] == pytest.approx(
        entry["power"]["mean_power_mw"]["VDD_IN"] / entry["throughput_ips"], rel=1e-3)
    cached = json.loads((run_dir.root / "devices" / "jetson-orin-nx" / "mimic" / "trtexec" /
                         f"{NX_VARIANT}-trt10-cache" / "b1.layers.json").read_text())  # fmt: skip
    assert cached["Layers"]
    assert not list((run_dir.root / "devices" / "jetson-orin-nx").rglob("*.plan"))  # engines stay on the device
    assert main(["report", str(run_dir.root)]) == 0
    report_md = (run_dir.report_dir / "report.md").read_text()
    table = report_md.split("## Latency by device")[1].split("## Ratios")[0]
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert "cpu b1 p50 ms" in header and "jetson-orin-nx b1 p50 ms" in header and "jetson-orin-nx mJ/image" in header
    fp32_row = next(line for line in table.splitlines() if line.startswith("| MimicNorm | fp32 |"))
    assert "n/a" not in fp32_row  # measured on both: the CPU here, the (fake) Jetson there
    assert next(line for line in table.splitlines() if f"| {NX_VARIANT} |" in line).count("n/a") == 2  # not on CPU


def test_device_script_refuses_a_non_jetson_and_a_damaged_bundle(tmp_path, run_dir):
    env = _device_env(tmp_path)
    script = str(REPO / "scripts" / "jetson" / "run.sh")
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(b"not a bundle")
    done = subprocess.run(["bash", script, str(bundle)], cwd=tmp_path, capture_output=True, text=True, check=False,
                          env={**env, "MIMICNORM_DEVICE_ROOT": str(tmp_path)})  # fmt: skip
    assert done.returncode == 2 and "this is not a Jetson" in done.stderr
    done = subprocess.run(["bash", script, str(bundle), "--out", "r"], cwd=tmp_path, capture_output=True, text=True,
                          check=False, env=env)  # fmt: skip
    assert done.returncode == 2 and "damaged or not a bundle" in done.stderr
    assert not (tmp_path / "r.work" / "bundle").exists()


@pytest.mark.slow
def test_device_script_builds_with_the_tensorrt_backend(run_dir, tmp_path):
    """The default path (no --trtexec): build/bench through engines/tensorrt on the recording FAKE
    tensorrt (tests/fake_tensorrt.py, installed in every subprocess by tests/fakes/tensorrt_site)."""
    bundle = tmp_path / "nx.tar.gz"
    assert main(["bundle", str(run_dir.root), "--target", "jetson-orin-nx", "--out", str(bundle), "--test-set"]) == 0
    env = _device_env(tmp_path)
    env.update(MIMICNORM_FAKE_TENSORRT="10.3.0.30", TRT_VERSION="", BENCH_SECONDS="0.2",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), str(FAKES / "tensorrt_site")]))
    done = subprocess.run(["bash", str(REPO / "scripts" / "jetson" / "run.sh"), str(bundle), "--out", "results",
                           "--batch-sizes", "4"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TensorRT 10.3.0.30" in done.stderr  # the version came from the (fake) tensorrt module
    for variant in ("fp32", NX_VARIANT, f"{NX_VARIANT}-trt10-cache", "fp16"):
        bench = json.loads((tmp_path / "results" / "mimic" / "bench" / f"{variant}.json").read_text())
        assert bench["engine"]["backend"] == "tensorrt" and bench["engine"]["target"] == "jetson-orin-nx"
        assert [e["batch_size"] for e in bench["latency"]] == [4]
        assert all(e["timing_source"] == "harness" and e["power"]["energy_per_image_mj"] > 0 for e in bench["latency"])
        assert bench["accuracy"]["images"] == 16  # fed in batches of at most 4, the engine's profile
        assert bench["environment"]["jetson"]["power_mode"] == "MAXN"
    assert (tmp_path / "results.tar.gz").is_file()
