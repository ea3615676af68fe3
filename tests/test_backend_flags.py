"""A backend's `build` flags are its own: declared beside its Options (engines/<backend>/options.py
FLAGS) and added by the CLI from the registry, so a new backend never edits mimicnorm_deploy/cli.py.

The seam is shown with a fake backend, registered here only, whose flags must reach its Options.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from engines.arguments import Flag, positive_int
from engines.manifest import EngineManifest
from engines.registry import BACKENDS, BackendSpec, backend_options, options_module
from mimicnorm_deploy.cli import build_parser, main


@dataclasses.dataclass
class FakeOptions:
    precision: str = "fp32"
    effort: int = 1
    hurry: bool = False


FAKE_FLAGS = (
    Flag("--precision", "precision", "fp32 or int8, as the fake pretends", choices=("fp32", "int8", "fake8")),
    Flag("--fake-effort", "effort", "how hard the fake builder pretends to try", type=positive_int),
    Flag("--fake-hurry", "hurry", "the fake builder skips its pretend work", const=True),
)


@pytest.fixture
def fake_backend(monkeypatch):
    """Backend "fake": a package and an options module that exist only in sys.modules; the Options
    each build was given are recorded."""
    built: list[FakeOptions] = []

    def build_engine(model_path, engine_dir, options):
        built.append(options)
        return EngineManifest(backend="fake", backend_version="0", target="cpu", precision=options.precision,
                              engine_file="none", engine_sha256="", model_sha256="", source_model=str(model_path),
                              device_fingerprint="", device={}, backend_options=dataclasses.asdict(options),
                              build_flags={}, created="")  # fmt: skip

    options = types.ModuleType("fake_backend.options")
    options.Options, options.FLAGS = FakeOptions, FAKE_FLAGS
    package = types.ModuleType("fake_backend")
    package.Options, package.build_engine = FakeOptions, build_engine
    monkeypatch.setitem(sys.modules, "fake_backend", package)
    monkeypatch.setitem(sys.modules, "fake_backend.options", options)
    spec = BackendSpec("fake", "fake_backend", "a fake backend that records its options", "fake_backend.options")
    monkeypatch.setitem(BACKENDS, "fake", spec)
    return built


def _build_help() -> str:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices["build"].format_help()


def test_a_registered_backend_adds_its_flags_to_build(fake_backend):
    text = " ".join(_build_help().split())
    assert "fake options: a fake backend that records its options" in text
    assert "--fake-effort FAKE_EFFORT how hard the fake builder pretends to try" in text
    assert "--fake-hurry the fake builder skips its pretend work" in text
    # the shared --precision: each backend's meaning, every backend's choices
    assert "fake: fp32 or int8, as the fake pretends" in text and "tensorrt: as-typed" in text
    assert "--precision {fp32,fp16,int8,as-typed,bf16,fake8}" in text


def test_the_flags_reach_the_fake_backends_options(fake_backend, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read by the fake")
    build = ["build", str(model), "--out", str(tmp_path / "engine"), "--backend", "fake"]
    assert main([*build, "--fake-effort", "3", "--fake-hurry", "--precision", "fake8"]) == 0
    assert main(build) == 0
    assert fake_backend == [FakeOptions("fake8", 3, True), FakeOptions()]
    assert "fake 0, fake8 for target cpu" in capsys.readouterr().out


def test_another_backends_flag_is_refused_in_one_line(fake_backend, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert main(["build", str(model), "--out", str(tmp_path / "e"), "--fake-effort", "2"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: backend 'onnxruntime' has no option effort; its options")
    assert main(["build", str(model), "--out", str(tmp_path / "e"), "--backend", "fake", "--cuda-graph"]) == 2
    assert "backend 'fake' has no option cuda_graph" in capsys.readouterr().err
    assert fake_backend == []


def test_every_flag_sets_a_field_of_its_backends_options():
    for name in BACKENDS:
        module = options_module(name)
        fields = {field.name for field in dataclasses.fields(module.Options)}
        assert module.FLAGS and {flag.field for flag in module.FLAGS} <= fields, name


def test_a_zero_value_is_passed_not_dropped():
    args = build_parser().parse_args(["build", "m.onnx", "--out", "e", "--backend", "tensorrt",
                                      "--optimization-level", "0"])  # fmt: skip
    from mimicnorm_deploy.cli import _backend_option_values

    values = _backend_option_values(args)
    assert values == {"builder_optimization_level": 0}
    assert backend_options("tensorrt", **values).builder_optimization_level == 0
