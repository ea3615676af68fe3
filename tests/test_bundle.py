"""bundle/unbundle: target-specific contents, checksums, and refusal of unsafe or damaged archives."""

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from engines.artifacts import write_json
from engines.errors import UserError
from engines.schemas import CALIBRATION
from mimicnorm_deploy.bundle import BUNDLE_MANIFEST_NAME, extract_bundle, write_bundle
from mimicnorm_deploy.cli import main
from mimicnorm_deploy.layout import TENSORRT_VARIANT, RunLayout

V = TENSORRT_VARIANT


def _calibration(model_dir: Path, variant: str, target: str, **extra) -> None:
    (model_dir / f"model.{variant}.onnx").write_bytes(f"qdq {variant} {target}".encode())
    write_json(model_dir / f"model.{variant}.json", *CALIBRATION, {"target": target, **extra})


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as the demo leaves it, with file contents that only need to be distinct."""
    run = tmp_path / "run"
    for norm in ("mimic", "bn"):
        model_dir = run / norm
        model_dir.mkdir(parents=True)
        (model_dir / "model.onnx").write_bytes(f"fp32 {norm}".encode())
        (model_dir / "train_report.json").write_text("{}")
        _calibration(model_dir, "int8-per-tensor.cpu", "cpu")
        _calibration(model_dir, V, "desktop-gpu", trt_cache=str(RunLayout(run).tensorrt_cache(norm)),
                     fp16=f"{norm}/model.fp16.onnx")  # fmt: skip
        (model_dir / f"model.{V}.plan.json").write_text('{"layers": {}}')
        (model_dir / f"model.{V}.trt10.calib").write_text("TRT-100300-EntropyCalibration2\n")
        (model_dir / f"model.{V}.trt10.calib.json").write_text("{}")
        (model_dir / "model.fp16.onnx").write_bytes(f"fp16 {norm}".encode())
    (run / "data").mkdir()
    (run / "data" / "test.npz").write_bytes(b"test images")
    return run


def _names(bundle: Path) -> list[str]:
    with tarfile.open(bundle) as archive:
        return sorted(archive.getnames())


def test_jetson_bundle_holds_the_tensorrt_files_and_the_device_scripts(run_dir, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    manifest = write_bundle(run_dir, "jetson-orin-nx", bundle, test_set=True)
    per_norm = ["model.fp16.onnx", f"model.{V}.onnx", f"model.{V}.plan.json", "model.onnx",
                f"model.{V}.trt10.calib", f"model.{V}.trt10.calib.json"]  # fmt: skip
    expected = sorted([BUNDLE_MANIFEST_NAME, "data/test.npz", "scripts/run.sh", "scripts/setup.sh"]
                      + [f"{norm}/{name}" for norm in ("bn", "mimic") for name in per_norm])  # fmt: skip
    assert _names(bundle) == expected
    assert manifest["target"]["name"] == "jetson-orin-nx" and manifest["target"]["workspace_mib"] == 1024
    engines = {e["name"]: e for e in manifest["engines"]}
    assert engines[f"mimic/{V}"] == {"name": f"mimic/{V}", "kind": "qdq",
                                              "model": f"mimic/model.{V}.onnx", "calibration_cache": None,
                                              "plan": f"mimic/model.{V}.plan.json"}  # fmt: skip
    cache = engines[f"mimic/{V}-trt10-cache"]
    assert (cache["kind"], cache["model"], cache["calibration_cache"]) == (
        "int8-cache", "mimic/model.onnx", f"mimic/model.{V}.trt10.calib")
    assert engines["bn/fp16"]["kind"] == "fp16" and engines["bn/fp32"]["kind"] == "fp32"
    assert not any("per-tensor" in name for name in engines)  # calibrated for the CPU's encoding


def test_cpu_bundle_holds_only_the_cpu_encoding(run_dir, tmp_path):
    manifest = write_bundle(run_dir, "cpu", tmp_path / "cpu.tar.gz")
    per_norm = ("model.onnx", "model.int8-per-tensor.cpu.onnx")
    assert sorted(manifest["files"]) == sorted(f"{norm}/{name}" for norm in ("bn", "mimic") for name in per_norm)


def test_round_trip_restores_every_file(run_dir, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    write_bundle(run_dir, "jetson-orin-agx-dla0", bundle)
    dest = tmp_path / "device" / "bundle"
    manifest = extract_bundle(bundle, dest)
    assert (dest / "mimic" / f"model.{V}.trt10.calib").read_text() == "TRT-100300-EntropyCalibration2\n"
    assert (dest / "bn" / "model.onnx").read_bytes() == b"fp32 bn"
    assert (dest / "scripts" / "run.sh").stat().st_mode & 0o100  # the script stays executable
    assert json.loads((dest / BUNDLE_MANIFEST_NAME).read_text())["files"] == manifest["files"]
    assert manifest["target"]["dla_core"] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary directory, not mkdtemp's private one


def test_missing_run_artifacts_and_test_set_are_one_line_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="no exported model"):
        write_bundle(tmp_path, "cpu", tmp_path / "x.tar.gz")
    (run_dir / "data" / "test.npz").unlink()
    with pytest.raises(UserError, match="no test set"):
        write_bundle(run_dir, "cpu", tmp_path / "x.tar.gz", test_set=True)
    (run_dir / "mimic" / "model.fp16.onnx").unlink()
    with pytest.raises(UserError, match=f"model.fp16.onnx: listed by model.{V}.json but missing"):
        write_bundle(run_dir, "jetson-orin-nano", tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


# --- hostile and damaged archives ----------------------------------------------------------------


def _rewrite(bundle: Path, out: Path, edit) -> Path:
    """Copy `bundle` member by member through edit(info, data) -> list of (info, data) to write."""
    with tarfile.open(bundle) as source, tarfile.open(out, "w:gz") as target:
        for info in source.getmembers():
            data = source.extractfile(info).read() if info.isfile() else b""
            for new_info, new_data in edit(info, data):
                new_info.size = len(new_data)
                target.addfile(new_info, io.BytesIO(new_data) if new_info.isfile() else None)
    return out


def _refused(bundle: Path, dest: Path, match: str) -> None:
    with pytest.raises(UserError, match=match) as error:
        extract_bundle(bundle, dest)
    assert "\n" not in str(error.value)
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no staging directory left over


@pytest.fixture
def bundle(run_dir, tmp_path):
    path = tmp_path / "good.tar.gz"
    write_bundle(run_dir, "jetson-orin-nx", path)
    return path


def test_a_corrupted_file_is_refused_and_nothing_is_extracted(bundle, tmp_path):
    def flip(info, data):
        return [(info, data.replace(b"fp32 mimic", b"fp32 mimiC") if info.name == "mimic/model.onnx" else data)]

    _refused(_rewrite(bundle, tmp_path / "bad.tar.gz", flip), tmp_path / "out" / "b", "mimic/model.onnx does not "
             "match its sha256")  # fmt: skip


def test_an_incomplete_or_padded_bundle_is_refused(bundle, tmp_path):
    def drop(info, data):
        return [] if info.name == f"bn/model.{V}.trt10.calib" else [(info, data)]

    _refused(_rewrite(bundle, tmp_path / "short.tar.gz", drop), tmp_path / "o1" / "b",
             f"incomplete, bn/model.{V}.trt10.calib is missing")  # fmt: skip

    def extra(info, data):
        if info.name != BUNDLE_MANIFEST_NAME:
            return [(info, data)]
        return [(info, data), (tarfile.TarInfo("bn/extra.onnx"), b"smuggled")]

    _refused(_rewrite(bundle, tmp_path / "extra.tar.gz", extra), tmp_path / "o2" / "b", "bn/extra.onnx, which")


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("../escape.onnx", tarfile.REGTYPE, r"'\.\.' part"),
        ("bn/../../escape.onnx", tarfile.REGTYPE, r"'\.\.' part"),
        ("/etc/escape.onnx", tarfile.REGTYPE, "absolute path"),
        ("bn/link.onnx", tarfile.SYMTYPE, "a link"),
        ("bn/hard.onnx", tarfile.LNKTYPE, "a link"),
        ("bn/tty", tarfile.CHRTYPE, "special file"),
        ("bn/fifo", tarfile.FIFOTYPE, "special file"),
    ],
)
def test_unsafe_members_are_refused(bundle, tmp_path, name, kind, match):
    def add(info, data):
        if info.name != BUNDLE_MANIFEST_NAME:
            return [(info, data)]
        hostile = tarfile.TarInfo(name)
        hostile.type = kind
        hostile.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        return [(hostile, b"x" if kind == tarfile.REGTYPE else b""), (info, data)]

    dest = tmp_path / "out" / "b"
    _refused(_rewrite(bundle, tmp_path / "hostile.tar.gz", add), dest, match)
    assert not (tmp_path / "escape.onnx").exists() and not (tmp_path / "out" / "escape.onnx").exists()


def test_truncated_or_foreign_archives_are_one_line_errors(bundle, tmp_path):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    _refused(truncated, tmp_path / "o1" / "b", "damaged or not a bundle")
    foreign = tmp_path / "foreign.tar.gz"
    with tarfile.open(foreign, "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
    _refused(foreign, tmp_path / "o2" / "b", "no bundle.json inside")
    plain = tmp_path / "plain.gz"
    plain.write_bytes(gzip.compress(b"not a tar"))
    _refused(plain, tmp_path / "o3" / "b", "damaged or not a bundle")


def test_an_existing_destination_is_not_touched(bundle, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        extract_bundle(bundle, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_cli_bundle_and_unbundle(run_dir, tmp_path, capsys):
    bundle = tmp_path / "b.tar.gz"
    assert main(["bundle", str(run_dir), "--target", "jetson-orin-nano", "--out", str(bundle)]) == 0
    assert "engines to build on jetson-orin-nano" in capsys.readouterr().out
    assert main(["unbundle", str(bundle), "--out", str(tmp_path / "x")]) == 0
    assert "files checked (sha256) for jetson-orin-nano" in capsys.readouterr().out
    assert main(["unbundle", str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
