import json

from engines.artifacts import write_json
from engines.fingerprint import (
    environment_fingerprint,
    finish_fingerprint,
    parse_nvidia_smi,
    parse_nvpmodel,
    parse_tegra_release,
)


def test_fingerprint_of_this_machine_is_json_and_gains_the_load_after(tmp_path):
    before = environment_fingerprint()
    assert before["cpu"]["model_name"]
    assert before["cpu"]["logical_cores"] >= 1
    assert "load_average_after" not in before
    after = finish_fingerprint(before)
    assert len(after["load_average_after"]) == 3
    path = write_json(tmp_path / "f.json", "test/fingerprint", 1, after)
    assert json.loads(path.read_text())["cpu"] == before["cpu"]


def test_nvidia_smi_rows():
    text = "NVIDIA H200, 570.86.15, 143771 MiB, 345 MHz, 1980 MHz, P0, 700.00 W\n"
    (gpu,) = parse_nvidia_smi(text)
    assert gpu["name"] == "NVIDIA H200"
    assert gpu["driver_version"] == "570.86.15"
    assert gpu["clocks.max.sm"] == "1980 MHz"
    assert parse_nvidia_smi("") == []


def test_jetson_release_and_power_mode():
    release = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n"
    assert parse_tegra_release(release) == "36.4.3"
    assert parse_tegra_release("garbage") is None
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN"
    assert parse_nvpmodel("NV Power Mode: 15W\n2\n") == "15W"
    assert parse_nvpmodel("") is None
