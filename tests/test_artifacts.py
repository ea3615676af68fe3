"""Artifact I/O: atomic writes, versioned JSON, run manifest, image sets."""

import json
import math

import numpy as np
import pytest

from engines.artifacts import (
    atomic_path,
    load_image_set,
    read_json,
    record_artifact,
    save_image_set,
    staged_files,
    verify_artifact,
    write_json,
)
from engines.errors import UserError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    import os

    (tmp_path / "keep.txt").write_text("before")
    with pytest.raises(RuntimeError):
        with staged_files(tmp_path) as staging:
            (staging / "a.onnx").write_bytes(b"model")
            raise RuntimeError("the second file failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]

    with staged_files(tmp_path) as staging:
        (staging / "a.onnx").write_bytes(b"model")
        (staging / "a.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.onnx", "keep.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.onnx").stat().st_mode & 0o777 == 0o666 & ~umask


def test_versioned_json_round_trip_and_refusals(tmp_path):
    path = write_json(tmp_path / "a.json", "x/thing", 2, {"value": 1.5, "inf": math.inf, "arr": np.arange(3)})
    document = json.loads(path.read_text())  # strict JSON: no Infinity
    assert document == {"schema": "x/thing", "schema_version": 2, "value": 1.5, "inf": None, "arr": [0, 1, 2]}
    assert read_json(path, "x/thing", 2)["value"] == 1.5
    with pytest.raises(UserError, match="expected a x/other file"):
        read_json(path, "x/other", 2)
    with pytest.raises(UserError, match="schema version 2 is not supported"):
        read_json(path, "x/thing", 3)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a JSON file"):
        read_json(tmp_path / "bad.json", "x/thing", 2)


def test_run_manifest_detects_a_changed_artifact(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("input")
    artifact = tmp_path / "out.txt"
    artifact.write_text("result")
    entry = record_artifact(tmp_path, artifact, "stage-x", inputs=[source], params={"k": 1})
    assert entry["stage"] == "stage-x" and "in.txt" in entry["inputs"]
    verify_artifact(tmp_path, artifact)  # unchanged: passes
    artifact.write_text("edited")
    with pytest.raises(UserError, match="changed since stage 'stage-x'"):
        verify_artifact(tmp_path, artifact)


def test_image_set_round_trip_and_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 4, 4)).astype(np.uint8)
    save_image_set(tmp_path / "s.npz", images, np.arange(5), 1 / 255)
    inputs, labels = load_image_set(tmp_path / "s.npz")
    assert inputs.dtype == np.float32 and np.allclose(inputs, images / 255.0)
    assert labels.tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not an image set"):
        load_image_set(tmp_path / "junk.npz")
    save_image_set(tmp_path / "empty.npz", images[:0], None, 1 / 255)
    with pytest.raises(UserError, match="empty"):
        load_image_set(tmp_path / "empty.npz")
