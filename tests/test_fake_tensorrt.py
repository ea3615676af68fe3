"""The recording fake of TensorRT (tests/fake_tensorrt.py) offers nothing TensorRT does not: every
class, function, attribute and enum member it has exists in tensorrt-stubs 10.13 (NVIDIA's API as
pybind11 generates it). And it enforces the rules we rely on, per TensorRT version.

The stubs are the repaired copy scripts/typecheck.sh leaves in .cache/tensorrt-stubs (or
$TENSORRT_STUBS_DIR); scripts/test.sh runs typecheck.sh first, so CI always has them.
"""

from __future__ import annotations

import ast
import enum
import inspect
import os
from pathlib import Path

import pytest
from fake_tensorrt import FAKE_ONLY, ApiRuleViolation, FakeGpu, make_fake_tensorrt

REPO = Path(__file__).resolve().parent.parent
STUBS = Path(os.environ.get("TENSORRT_STUBS_DIR", REPO / ".cache" / "tensorrt-stubs"))
BINDINGS = STUBS / "tensorrt_bindings" / "tensorrt.pyi"


def _members(node: ast.ClassDef | ast.Module) -> dict[str, ast.ClassDef | None]:
    """Names a stub class (or module) defines; nested classes map to their definition."""
    names: dict[str, ast.ClassDef | None] = {}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[item.name] = None
        elif isinstance(item, ast.ClassDef):
            names[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names[item.target.id] = None
        elif isinstance(item, ast.Assign):
            names.update({target.id: None for target in item.targets if isinstance(target, ast.Name)})
        elif isinstance(item, ast.ImportFrom):
            names.update({alias.asname or alias.name: None for alias in item.names})
    return names


@pytest.fixture(scope="module")
def stubs() -> dict[str, ast.ClassDef | None]:
    if not BINDINGS.is_file():
        pytest.skip(f"tensorrt-stubs not at {STUBS}; run scripts/typecheck.sh (scripts/test.sh does)")
    package = _members(ast.parse((STUBS / "tensorrt" / "__init__.pyi").read_text(encoding="utf-8")))
    # The package re-exports the bindings' classes by import: keep the class definitions.
    return {**package, **_members(ast.parse(BINDINGS.read_text(encoding="utf-8")))}


def _stub_class_members(stubs: dict, stub: ast.ClassDef) -> set[str]:
    names = set(_members(stub))
    for base in stub.bases:  # e.g. IInt8EntropyCalibrator2(IInt8Calibrator)
        if isinstance(base, ast.Name) and isinstance(stubs.get(base.id), ast.ClassDef):
            names |= _stub_class_members(stubs, stubs[base.id])
    return names


def _fake_class_members(cls: type) -> dict[str, object]:
    if issubclass(cls, enum.Enum):
        return dict(cls.__members__)
    members: dict[str, object] = {}
    for klass in cls.__mro__:
        if klass.__module__ in ("builtins", "enum") or klass.__name__ == "_Strict":
            continue
        members.update({name: None for name in getattr(klass, "__annotations__", {}) if not name.startswith("_")})
        members.update({name: value for name, value in vars(klass).items() if not name.startswith("_")})
    return members


def _missing(stubs: dict, name: str, fake: type, stub: ast.ClassDef) -> list[str]:
    known = _stub_class_members(stubs, stub)
    missing = []
    for member, value in _fake_class_members(fake).items():
        if member not in known:
            missing.append(f"{name}.{member}")
        elif inspect.isclass(value) and isinstance(_members(stub).get(member), ast.ClassDef):
            missing += _missing(stubs, f"{name}.{member}", value, _members(stub)[member])  # nested, e.g. Severity
    return missing


@pytest.mark.parametrize("version", ["10.3.0.30", "10.13.0.35", "11.1.0.5"])
def test_every_fake_attribute_exists_in_tensorrt_stubs(stubs, version):
    fake = make_fake_tensorrt(version, FakeGpu())
    public = [name for name in vars(fake) if (not name.startswith("_") or name == "__version__")]
    assert len(public) > 25  # the scan saw the fake's API
    missing = [name for name in public if name not in FAKE_ONLY and name not in stubs]
    for name in public:
        value = getattr(fake, name)
        if inspect.isclass(value) and isinstance(stubs.get(name), ast.ClassDef):
            missing += _missing(stubs, name, value, stubs[name])
    assert missing == [], "the fake offers what TensorRT does not"
    assert sum(isinstance(stubs.get(name), ast.ClassDef) for name in public) > 20  # classes were compared


def test_the_scan_catches_an_invented_attribute(stubs):
    class Builder:
        def build_engine(self):  # removed in TensorRT 10
            pass

    assert _missing(stubs, "Builder", Builder, stubs["Builder"]) == ["Builder.build_engine"]


def test_tensorrt_10_removed_what_the_fake_leaves_out(stubs):
    assert "build_engine" not in _stub_class_members(stubs, stubs["Builder"])
    engine = _stub_class_members(stubs, stubs["ICudaEngine"])
    assert not {"get_binding_index", "num_bindings", "binding_is_input"} & engine
    assert {"get_tensor_name", "num_io_tensors", "device_memory_size_v2"} <= engine


def test_tensorrt_11_has_no_precision_flags_or_calibrators():
    trt = make_fake_tensorrt("11.1.0.5", FakeGpu())
    assert not {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"} & set(trt.BuilderFlag.__members__)
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    config = trt.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()
    assert "INT8" in make_fake_tensorrt("10.3.0.30", FakeGpu()).BuilderFlag.__members__


def test_the_fake_refuses_precision_on_a_strongly_typed_network(tmp_path):
    from tiny_onnx import make_tiny_resnet

    trt = make_fake_tensorrt("10.13.0.35", FakeGpu())
    network = trt.Builder(None).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    trt.OnnxParser(network, None).parse_from_file(str(make_tiny_resnet(tmp_path / "m.onnx")))
    with pytest.raises(ApiRuleViolation):
        network.get_layer(0).precision = trt.DataType.HALF
