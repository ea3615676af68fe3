"""The README's promise under generated hostile input, for every command and option class:

    exit status 2, one line on stderr (`error: what is wrong; how to fix it`), no traceback,
    no new or changed file anywhere in the workspace, every input byte-identical afterwards.

Commands run in-process on a workspace of tiny valid artifacts (tests/fuzz_workspace.py). The
properties find each command's output options and number options in the parser itself, so a new
command is fuzzed as soon as it is registered (fully where it is listed in `BASES`, through its
argument parsing otherwise). Hypothesis runs derandomized with a fixed number of examples per
property, so CI runs the same cases every time; docs/RELIABILITY.md records how many.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fuzz_workspace import CLASSES, IN_CHANS, SIZE, Workspace, run_cli, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines import arguments
from engines.artifacts import save_image_set
from mimicnorm_deploy.cli import build_parser

EXAMPLES = int(os.environ.get("MIMICNORM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)  # fmt: skip
# Each generated case appends one line here when set: how docs/RELIABILITY.md counts them.
CASE_LOG = os.environ.get("MIMICNORM_FUZZ_LOG")
OUT = "{out}"  # where a base invocation takes its main output


@pytest.fixture(scope="module")
def ws(workspace) -> Workspace:
    (workspace.root / "empty-dir").mkdir(exist_ok=True)
    return workspace


# --- the commands, as the parser declares them ----------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = _subparsers()


@dataclass(frozen=True)
class Slot:
    command: str
    flag: str  # an option string, or "" for the first positional
    kind: str  # outputs: "file"/"directory"; inputs: onnx, npz, engine, run, checkpoint, frozen


def _output_slots() -> list[Slot]:
    slots = []
    for name, sub in COMMANDS.items():
        for action in sub._actions:
            kind = getattr(action, "output_kind", None) or ("file" if action.dest == "out" else None)
            if kind and action.option_strings:
                slots.append(Slot(name, action.option_strings[0], kind))
    return slots


def _number_slots() -> list[tuple[str, str, object]]:
    """(command, option, converter) for every option typed by engines.arguments."""
    return [(name, action.option_strings[0], action.type) for name, sub in COMMANDS.items()
            for action in sub._actions
            if action.option_strings and getattr(action.type, "__module__", "") == arguments.__name__]  # fmt: skip


OUTPUT_SLOTS = _output_slots()
NUMBER_SLOTS = _number_slots()
TORCH_COMMANDS = {"freeze", "export"}  # their inputs exist only with torch


def bases(ws: Workspace) -> dict[str, list[str | Path]]:
    """A valid invocation of each command, with OUT where its `--out` goes."""
    found: dict[str, list[str | Path]] = {
        "calibrate": [ws.model, "--calib", ws.calib, "--batch-size", "8", "--out", OUT],
        "build": [ws.model, "--out", OUT, "--precision", "fp32"],
        "bench": [ws.engine, "--out", OUT, "--eval", ws.eval, "--no-latency"],
        "report": [ws.run, "--out", OUT],
        "prepare-data": ["--dataset", "synthetic", "--out", OUT],
        "train": ["--dataset", "synthetic", "--out", OUT],
        "profile-memory": ["--model", "resnet20", "--out", OUT],
        "demo": ["--dataset", "synthetic", "--quick", "--out", OUT],
        "models": [],
        "bundle": [ws.run, "--target", "jetson-orin-nx", "--out", OUT],
        "unbundle": [ws.model, "--out", OUT],  # not a bundle: the output is still checked first
        "pack-results": [ws.run, "--target", "jetson-orin-nx", "--out", OUT],
        "import-trtexec": ["--times", ws.eval, "--out", OUT],
        "trtexec": [ws.model, "--target", "desktop-gpu"],
    }
    if ws.checkpoint is not None:
        found["freeze"] = [ws.checkpoint, "--out", OUT]
        found["export"] = [ws.frozen, "--out", OUT]
    return found


def base_for(ws: Workspace, command: str) -> list[str | Path]:
    """The listed base invocation; for a command not listed (added since), its required positionals
    filled with the model: whatever it makes of that, the contract must hold."""
    known = bases(ws)
    if command in known:
        return list(known[command])
    positionals = [a for a in COMMANDS[command]._actions if not a.option_strings and a.nargs != 0]
    return [ws.model for _ in positionals]


def invocation(ws: Workspace, slot: Slot, value: str | Path) -> list[str | Path]:
    """The base invocation of the slot's command with `value` in the slot."""
    args = base_for(ws, slot.command)
    default_out = ws.root / ("fuzz-out.onnx" if slot.kind == "file" else "fuzz-out-dir")
    if slot.flag == "--out" and OUT in args:
        return [slot.command, *(value if a == OUT else a for a in args)]
    args = [default_out if a == OUT else a for a in args]
    return [slot.command, *args, slot.flag, value]


# --- the contract ----------------------------------------------------------------------------------


def assert_refused(ws: Workspace, args: list[str | Path]) -> str:
    before = snapshot(ws.root)
    outcome = run_cli(*args)
    if CASE_LOG:
        with open(CASE_LOG, "a") as log:
            log.write(json.dumps([os.environ.get("PYTEST_CURRENT_TEST", "?"), *map(str, args)]) + "\n")
    lines = outcome.err_lines
    context = f"{[str(a) for a in args]} -> exit {outcome.status}: {outcome.err!r}"
    assert outcome.status == 2, context
    assert len(lines) == 1 and lines[0].startswith("error: "), context
    assert "Traceback" not in outcome.err, context
    assert snapshot(ws.root) == before, f"files changed: {context}"
    return lines[0]


@pytest.fixture
def scratch(ws):
    """A directory for one case's generated inputs; gone afterwards."""
    path = ws.root / "scratch"
    path.mkdir()
    yield path
    shutil.rmtree(path)


class Scratch:
    """The same as the fixture, for Hypothesis bodies (a function fixture is not reset per example)."""

    def __init__(self, ws: Workspace) -> None:
        self.path = ws.root / "scratch"

    def __enter__(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# --- outputs ---------------------------------------------------------------------------------------


def recorded_stage(path: Path) -> str | None:
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return None
    entry = json.loads(manifest.read_text())["artifacts"].get(path.name)
    return entry["stage"] if entry else None


def protected_targets(ws: Workspace, slot: Slot) -> list[Path]:
    """Files an output of `slot` must never replace: the command's own inputs, files another stage
    wrote, manifests, and the files of an engine directory."""
    args = base_for(ws, slot.command)
    inputs = [Path(a) for a in args if isinstance(a, Path)]
    files = [p for a in inputs for p in ([a] if a.is_file() else sorted(a.rglob("*")) if a.is_dir() else [])]
    files += [p for p in ws.inputs() if recorded_stage(p) not in (None, slot.command)]
    files += [ws.root / "manifest.json", ws.engine / "engine.json", ws.engine / "model.onnx"]
    if slot.kind == "directory" and slot.command != "build":
        files.append(ws.engine)  # a directory output may not be, or be inside, an engine directory
    return sorted({p for p in files if p.exists() and p.is_file() or p == ws.engine})


@FUZZ
@given(data=st.data())
def test_no_output_replaces_an_input_or_another_stages_file(ws, data):
    slot = data.draw(st.sampled_from(OUTPUT_SLOTS), label="slot")
    target = data.draw(st.sampled_from(protected_targets(ws, slot)), label="target")
    assert_refused(ws, invocation(ws, slot, target))


def bad_locations(ws: Workspace, kind: str) -> list[str | Path]:
    """Places no output can go: the wrong kind of thing, under a file, inside an engine, no name at all."""
    common = [ws.model / "below-a-file", ws.engine / "inside-an-engine", ""]
    if kind == "file":
        return [*common, ws.root / "empty-dir", ws.root, ws.root / "nested" / "manifest.json",
                ws.root / "x" / "engine.json"]  # fmt: skip
    return [*common, ws.model, ws.calib]


@FUZZ
@given(data=st.data())
def test_output_locations_that_cannot_be_written(ws, data):
    slot = data.draw(st.sampled_from(OUTPUT_SLOTS), label="slot")
    location = data.draw(st.sampled_from(bad_locations(ws, slot.kind)), label="location")
    assert_refused(ws, invocation(ws, slot, location))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("slot", OUTPUT_SLOTS, ids=lambda s: f"{s.command}{s.flag}")
def test_output_in_a_read_only_directory(ws, scratch, slot):
    locked = scratch / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = assert_refused(ws, invocation(ws, slot, locked / "out"))
    finally:
        locked.chmod(0o700)
    assert "permission denied" in line


# --- input files -----------------------------------------------------------------------------------


def input_slots(ws: Workspace) -> list[Slot]:
    slots = [Slot("calibrate", "", "onnx"), Slot("calibrate", "--calib", "npz"), Slot("calibrate", "--eval", "npz"),
             Slot("build", "", "onnx"), Slot("bench", "", "engine"), Slot("bench", "--eval", "npz"),
             Slot("bench", "--reference", "engine"), Slot("report", "", "run")]  # fmt: skip
    if ws.checkpoint is not None:
        slots += [Slot("freeze", "", "checkpoint"), Slot("freeze", "--check-images", "npz"),
                  Slot("export", "", "frozen")]  # fmt: skip
    return slots


def with_input(ws: Workspace, slot: Slot, value: Path, scratch: Path) -> list[str | Path]:
    args = [scratch / "out" if a == OUT else a for a in base_for(ws, slot.command)]
    if slot.command == "report":
        args[-1] = scratch / "report"
    if slot.flag == "":
        return [slot.command, value, *args[1:]]
    if slot.flag in args:
        args[args.index(slot.flag) + 1] = value
        return [slot.command, *args]
    return [slot.command, *args, slot.flag, value]


def valid_source(ws: Workspace, kind: str) -> Path:
    return {"onnx": ws.model, "npz": ws.calib, "engine": ws.engine, "run": ws.run,
            "checkpoint": ws.checkpoint, "frozen": ws.frozen}[kind]  # fmt: skip


def wrong_kind(ws: Workspace, kind: str) -> Path:
    """A real artifact of another kind."""
    return {"onnx": ws.calib, "npz": ws.model, "engine": ws.run, "run": ws.engine / "engine.json",
            "checkpoint": ws.model, "frozen": ws.calib}[kind]  # fmt: skip


def make_bad_input(ws: Workspace, kind: str, damage: tuple[str, object], scratch: Path) -> Path:
    """The slot's input, damaged one way: missing, the wrong kind of path, random bytes, truncated,
    or another artifact; directories (engine, run) get one of their files damaged."""
    how, detail = damage
    source = valid_source(ws, kind)
    if how == "missing":
        return scratch / "does-not-exist"
    if how == "wrong-kind":
        return wrong_kind(ws, kind)
    if how == "empty-dir":
        (scratch / "empty").mkdir()
        return scratch / "empty"
    if source.is_dir():
        copy = scratch / source.name
        shutil.copytree(source, copy)
        files = sorted(p for p in copy.rglob("*") if p.is_file() and p.suffix in (".json", ".onnx"))
        target = files[int(detail) % len(files)] if how == "truncated" else files[len(detail) % len(files)]
        _damage(target, how, detail)
        return copy
    bad = scratch / f"bad{source.suffix}"
    shutil.copyfile(source, bad)
    _damage(bad, how, detail)
    return bad


def _damage(path: Path, how: str, detail: object) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) * int(detail) // 100])
    else:  # random bytes
        path.write_bytes(bytes(detail))


DAMAGE = st.one_of(
    st.just(("missing", None)),
    st.just(("wrong-kind", None)),
    st.just(("empty-dir", None)),
    st.tuples(st.just("truncated"), st.integers(0, 99)),
    st.tuples(st.just("bytes"), st.binary(max_size=256)),
)


@FUZZ
@given(data=st.data())
def test_damaged_or_wrong_input_files(ws, data):
    slot = data.draw(st.sampled_from(input_slots(ws)), label="slot")
    damage = data.draw(DAMAGE, label="damage")
    with Scratch(ws) as scratch:
        bad = make_bad_input(ws, slot.kind, damage, scratch)
        args = with_input(ws, slot, bad, scratch)
        if slot.flag == "--reference":
            args = [*args, "--eval", ws.eval] if "--eval" not in args else args
        assert_refused(ws, args)


# --- image sets against the model --------------------------------------------------------------------


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % CLASSES


IMAGE_SET_FAULTS = st.one_of(
    st.tuples(st.just("channels"), st.integers(2, 4)),
    st.tuples(st.just("size"), st.sampled_from([s for s in range(1, 13) if s != SIZE])),
    st.tuples(st.just("dtype"), st.sampled_from(["float32", "float64", "int16", "uint16", "int8", "bool"])),
    st.tuples(st.just("ndim"), st.sampled_from([2, 3, 5])),
    st.tuples(st.just("empty"), st.just(0)),
    st.tuples(st.just("scale"), st.sampled_from(["text", "vector", "nan", "inf", "zero", "negative"])),
    st.tuples(st.just("labels"), st.sampled_from(["short", "long", "float", "2d", "negative", "text", "too-big"])),
    st.tuples(st.just("missing"), st.sampled_from(["images", "scale"])),
)


BAD_SCALES = {"text": np.array("1/255"), "vector": np.array([1.0, 2.0]), "nan": np.float32("nan"),
              "inf": np.float32("inf"), "zero": np.float32(0), "negative": np.float32(-1)}  # fmt: skip


def write_faulty_image_set(path: Path, fault: tuple[str, object], n: int = 24) -> Path:
    kind, detail = fault
    rng = np.random.default_rng(0)
    shape = [n, IN_CHANS, SIZE, SIZE]
    if kind == "channels":
        shape[1] = int(detail)
    elif kind in ("size",):
        shape[2] = shape[3] = int(detail)
    elif kind == "empty":
        shape[0] = 0
    images = rng.integers(0, 256, shape).astype(np.uint8)
    if kind == "dtype":
        images = images.astype(str(detail))
    if kind == "ndim":
        images = images.reshape(shape[0], -1) if detail == 2 else images[:, 0] if detail == 3 else images[:, None]
    arrays: dict[str, np.ndarray] = {"images": images, "scale": np.float32(1 / 255), "labels": _labels(shape[0])}
    if kind == "scale":
        arrays["scale"] = BAD_SCALES[str(detail)]
    if kind == "labels":
        arrays["labels"] = {"short": _labels(n - 1), "long": _labels(n + 3), "float": _labels(n) + 0.5,
                            "2d": _labels(n).reshape(-1, 1), "negative": _labels(n) - 1,
                            "text": np.array(["a"] * n), "too-big": _labels(n) + CLASSES}[detail]  # fmt: skip
    if kind == "missing":
        del arrays[str(detail)]
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def image_set_slots(ws: Workspace) -> list[Slot]:
    return [s for s in input_slots(ws) if s.kind == "npz"]


@FUZZ
@given(data=st.data())
def test_image_sets_that_do_not_fit_the_model(ws, data):
    slot = data.draw(st.sampled_from(image_set_slots(ws)), label="slot")
    fault = data.draw(IMAGE_SET_FAULTS, label="fault")
    with Scratch(ws) as scratch:
        bad = write_faulty_image_set(scratch / "bad.npz", fault)
        line = assert_refused(ws, with_input(ws, slot, bad, scratch))
    assert str(bad) in line  # the message names the file


def test_image_set_mismatch_names_file_dimension_and_expectation(ws, scratch):
    bad = write_faulty_image_set(scratch / "rgb.npz", ("channels", 3))
    line = assert_refused(ws, ["calibrate", ws.model, "--calib", ws.calib, "--eval", bad, "--batch-size", "8",
                               "--out", scratch / "q.onnx"])  # fmt: skip
    assert str(bad) in line and "3 channels" in line and f"takes {IN_CHANS}" in line


# --- numbers -----------------------------------------------------------------------------------------


def _rejected(convert) -> st.SearchStrategy[str]:
    def rejects(text: str) -> bool:
        try:
            convert(text)
        except argparse.ArgumentTypeError:
            return True
        return False

    candidates = st.one_of(
        st.sampled_from(["0", "-1", "-0.5", "nan", "inf", "-inf", "1e999", "x", "", " ", "1,x", "0x10", "1.5", "1,0",
                         ",", "100.5", "2", "1e-400"]),
        st.integers(-(10**9), 10**9).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
    )  # fmt: skip
    return candidates.filter(rejects)


@FUZZ
@given(data=st.data())
def test_nonsense_numbers(ws, data):
    command, option, convert = data.draw(st.sampled_from(NUMBER_SLOTS), label="option")
    value = data.draw(_rejected(convert), label="value")
    with Scratch(ws) as scratch:
        args = [scratch / "out" if a == OUT else a for a in base_for(ws, command)]
        line = assert_refused(ws, [command, *args, f"{option}={value}"])
    assert option in line


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--holdout", "24"], "leaves no calibration images"),
        (["--batch-size", "25"], "fewer than one batch"),
        (["--max-top1-drop", "1", "--holdout", "0"], "--holdout N"),
        (["--method", "percentile", "--percentile", "100.5"], "--percentile"),
        (["--method", "nope"], "nope"),
    ],
)
def test_calibrate_numbers_that_do_not_fit_the_data(ws, scratch, extra, expected):
    line = assert_refused(ws, ["calibrate", ws.model, "--calib", ws.calib, "--batch-size", "8",
                               "--out", scratch / "q.onnx", *extra])  # fmt: skip
    assert expected in line


def test_bench_batch_sizes(ws, scratch):
    for value, expected in (("0", "0 is not > 0"), ("1,x", "'x' is not an integer"), ("1,,2", "comma-separated")):
        line = assert_refused(ws, ["bench", ws.engine, "--out", scratch / "b.json", "--batch-sizes", value])
        assert expected in line


# --- the command line itself ---------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_unparseable_command_lines(ws, data):
    command = data.draw(st.sampled_from([*COMMANDS, "no-such-command"]), label="command")
    junk = data.draw(st.sampled_from(["--no-such-option", "--out", "extra-positional-1 extra-positional-2"]),
                     label="junk")  # fmt: skip
    args = [command] if command not in COMMANDS else [command, *base_for(ws, command)]
    args = [ws.root / "fuzz-out" if a == OUT else a for a in args]
    if junk == "--out" and command in COMMANDS:
        args = [a for a in args if a != "--out"][:1]  # drop the required output's value too: --out with no value
        args.append("--out")
    else:
        args += junk.split()
    line = assert_refused(ws, args)
    if junk == "--no-such-option" or command not in COMMANDS:
        assert "--help" in line  # argparse's own complaint (extra words may be taken by a nargs="+" argument)


def test_help_still_prints_the_usage():
    outcome = run_cli("calibrate", "--help")
    assert outcome.status == 0 and "usage: mimicnorm-deploy calibrate" in outcome.out


# --- metadata and JSON artifacts -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _invalid_for(field: str) -> st.SearchStrategy:
    """Values `field` of the checkpoint metadata must refuse."""
    if field in ("arch", "norm", "stem"):
        return JSON_VALUES.filter(lambda v: not isinstance(v, str)) | st.text(max_size=8).map(lambda t: f"no-{t}")
    if field == "dataset":
        return JSON_VALUES.filter(lambda v: not isinstance(v, str))
    if field in ("num_classes", "in_chans", "image_size", "epoch"):
        return JSON_VALUES.filter(lambda v: not (type(v) is int and v >= (0 if field == "epoch" else 1)))
    if field in ("input_mean", "input_std"):
        return JSON_VALUES.filter(lambda v: not (isinstance(v, list) and len(v) == IN_CHANS and all(
            type(x) in (int, float) and x > 0 for x in v)))  # fmt: skip
    if field == "classes":
        return JSON_VALUES.filter(lambda v: not (isinstance(v, list) and all(isinstance(x, str) for x in v)))
    if field == "metrics":
        return JSON_VALUES.filter(lambda v: not isinstance(v, dict))
    return JSON_VALUES.filter(lambda v: v is not None and not isinstance(v, str))  # frozen_from


META_FIELDS = ["arch", "norm", "stem", "dataset", "num_classes", "in_chans", "image_size", "epoch", "input_mean",
               "input_std", "classes", "metrics", "frozen_from"]  # fmt: skip


def write_checkpoint_with_metadata(source: Path, path: Path, text: str) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as fh:
        key = next(iter(fh.metadata()))
    save_file(load_file(str(source)), str(path), metadata={key: text})
    return path


@pytest.mark.torch
@FUZZ
@given(data=st.data())
def test_malformed_checkpoint_metadata(ws, data):
    if ws.checkpoint is None:
        pytest.skip("needs torch")
    command = data.draw(st.sampled_from(["freeze", "export"]), label="command")
    source = ws.checkpoint if command == "freeze" else ws.frozen
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as fh:
        meta = json.loads(next(iter(fh.metadata().values())))
    how = data.draw(st.sampled_from(["field", "missing", "unknown", "not-json", "not-object", "schema"]), label="how")
    if how == "field":
        field = data.draw(st.sampled_from(META_FIELDS), label="field")
        meta[field] = data.draw(_invalid_for(field), label="value")
        text = json.dumps(meta)
    elif how == "missing":
        del meta[data.draw(st.sampled_from(["arch", "norm", "num_classes", "in_chans", "image_size", "input_mean",
                                            "input_std", "classes", "dataset"]), label="field")]  # fmt: skip
        text = json.dumps(meta)
    elif how == "unknown":
        meta[data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in meta), label="key")] = 1
        text = json.dumps(meta)
    elif how == "not-json":
        text = json.dumps(meta)[: data.draw(st.integers(0, 40), label="cut")]
    elif how == "not-object":
        text = json.dumps(data.draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)), label="document"))
    else:
        meta["schema_version"] = data.draw(st.integers(2, 99), label="version")
        text = json.dumps(meta)
    with Scratch(ws) as scratch:
        bad = write_checkpoint_with_metadata(source, scratch / "bad.safetensors", text)
        assert_refused(ws, [command, bad, "--out", scratch / "out"])


def _mutate(document: object, path: list, value: object) -> object:
    """`document` with the leaf at `path` replaced by `value` (or deleted, for the marker DELETE)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(document) if isinstance(document, dict) else list(document)
    if not rest and value is DELETE:
        del copy[head]
        return copy
    copy[head] = _mutate(copy[head], rest, value)
    return copy


DELETE = object()


def _leaf_paths(document: object, prefix: list | None = None) -> list[list]:
    prefix = prefix or []
    if isinstance(document, dict) and document:
        return [p for k, v in document.items() for p in _leaf_paths(v, [*prefix, k])] + ([prefix] if prefix else [])
    if isinstance(document, list) and document:
        return [p for i, v in enumerate(document) for p in _leaf_paths(v, [*prefix, i])]
    return [prefix]


@FUZZ
@given(data=st.data())
def test_edited_json_artifacts_never_crash_or_destroy(ws, data):
    """A hand-edited engine manifest, train report or bench record: the command either still works
    (the edit did not matter) or refuses in one line; never a crash, never a changed input."""
    which = data.draw(st.sampled_from(["engine", "train-report", "bench-record"]), label="artifact")
    with Scratch(ws) as scratch:
        if which == "engine":
            copy = scratch / "engine"
            shutil.copytree(ws.engine, copy)
            target, args = copy / "engine.json", ["bench", copy, "--out", scratch / "b.json", "--eval", ws.eval,
                                                  "--no-latency"]  # fmt: skip
        else:
            copy = scratch / "run"
            shutil.copytree(ws.run, copy)
            shutil.rmtree(copy / "report")
            name = "train_report.json" if which == "train-report" else "bench/fp32.json"
            target, args = copy / "mimic" / name, ["report", copy, "--out", scratch / "report"]
        document = json.loads(target.read_text())
        path = data.draw(st.sampled_from([p for p in _leaf_paths(document) if p[0] not in ("schema",)]), label="path")
        value = data.draw(st.one_of(st.just(DELETE), JSON_VALUES), label="value")
        target.write_text(json.dumps(_mutate(document, path, value)))
        before = snapshot(ws.root)
        outcome = run_cli(*args)
        if CASE_LOG:
            with open(CASE_LOG, "a") as log:
                log.write(json.dumps([os.environ.get("PYTEST_CURRENT_TEST", "?"), *map(str, args), str(path)]) + "\n")
        context = f"{which} {path} = {value!r}: exit {outcome.status}: {outcome.err!r}"
        assert outcome.status in (0, 2) and "Traceback" not in outcome.err, context
        after = snapshot(ws.root)
        if outcome.status == 2:
            assert outcome.err_lines[-1].startswith("error: ") and after == before, context
        else:
            written = {k for k in after if k not in before or after[k] != before[k]}
            assert all(k.startswith(("scratch/b.json", "scratch/manifest.json", "scratch/report")) for k in written), (
                written, context)  # fmt: skip


# --- named regressions: the data-loss classes of the issue, each on its own ---------------------------------


@pytest.mark.parametrize(
    "make_args",
    [
        lambda ws, s: ["calibrate", ws.model, "--calib", ws.calib, "--batch-size", "8", "--out", ws.model],
        lambda ws, s: ["calibrate", ws.model, "--calib", ws.calib, "--batch-size", "8", "--out", s / "q.onnx",
                       "--trt-cache", ws.model],
        lambda ws, s: ["bench", ws.engine, "--out", ws.engine / "engine.json"],
        lambda ws, s: ["bench", ws.engine, "--out", ws.engine / "bench.json"],
        lambda ws, s: ["build", ws.model, "--out", ws.root, "--precision", "fp32"],
        lambda ws, s: ["report", ws.run, "--out", ws.engine],
    ],
    ids=["calibrate-out-is-model", "trt-cache-is-model", "bench-out-is-engine-manifest", "bench-out-in-engine",
         "build-over-input-dir", "report-into-engine"],
)  # fmt: skip
def test_data_loss_class(ws, scratch, make_args):
    assert_refused(ws, make_args(ws, scratch))


@pytest.mark.torch
def test_a_trained_checkpoint_is_never_replaced(ws, scratch):
    if ws.checkpoint is None:
        pytest.skip("needs torch")
    assert "also an input" in assert_refused(ws, ["freeze", ws.checkpoint, "--out", ws.checkpoint])
    assert "written by 'train'" in assert_refused(ws, ["export", ws.frozen, "--out", ws.checkpoint])
    assert "also an input" in assert_refused(ws, ["export", ws.frozen, "--out", ws.frozen])


def test_calibrate_into_an_existing_directory_leaves_nothing(ws, scratch):
    (scratch / "q.onnx").mkdir()
    line = assert_refused(ws, ["calibrate", ws.model, "--calib", ws.calib, "--batch-size", "8",
                               "--out", scratch / "q.onnx"])  # fmt: skip
    assert "is a directory" in line


def test_prepare_data_into_a_file(ws):
    assert "is a file" in assert_refused(ws, ["prepare-data", "--dataset", "synthetic", "--out", ws.model])


def test_npz_with_pickled_objects_is_refused_not_loaded(ws, scratch):
    with zipfile.ZipFile(scratch / "evil.npz", "w") as archive:
        with archive.open("images.npy", "w") as fh:
            np.save(fh, np.array([object()], dtype=object), allow_pickle=True)
    assert_refused(ws, ["bench", ws.engine, "--out", scratch / "b.json", "--eval", scratch / "evil.npz"])


def test_valid_image_set_with_saved_helper_still_works(ws, scratch):
    """The checks refuse what is wrong, not what is right: a set saved by the toolkit passes."""
    images = np.random.default_rng(0).integers(0, 256, (8, IN_CHANS, SIZE, SIZE), dtype=np.uint8)
    save_image_set(scratch / "ok.npz", images, _labels(8), 1 / 255)
    outcome = run_cli("bench", ws.engine, "--out", scratch / "b.json", "--eval", scratch / "ok.npz", "--no-latency")
    assert outcome.status == 0, outcome.err
