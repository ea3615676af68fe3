"""The CLI's last line of defence: every failure ends as one line, bugs are told apart from bad input."""

import argparse

import pytest

from engines.errors import UserError
from mimicnorm_deploy.cli import main
from mimicnorm_deploy.failures import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli


def _run_failing(exc: BaseException, capsys, debug: bool = False) -> tuple[int, list[str]]:
    def fake_command(args: argparse.Namespace) -> None:
        raise exc

    status = run_cli(lambda: argparse.Namespace(func=fake_command), debug)
    return status, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "exc, expected",
    [
        (UserError("bad thing; do this"), "error: bad thing; do this"),
        (UserError("two\nlines"), "error: two; lines"),
        (PermissionError(13, "Permission denied", "/x/y"), "error: /x/y: Permission denied; check the path"),
        (OSError(28, "No space left on device"), "error: No space left on device; check the path"),
        (MemoryError(), "error: out of memory"),
    ],
)
def test_expected_failures_are_one_line_exit_2(exc, expected, capsys):
    status, err = _run_failing(exc, capsys)
    assert status == EXIT_USER_ERROR and len(err) == 1 and err[0].startswith(expected), err


def test_onnxruntime_errors_are_expected(capsys):
    # ONNX Runtime's pybind classes live in onnxruntime.capi.*; a stand-in class from that module.
    module = {"__module__": "onnxruntime.capi.onnxruntime_pybind11_state"}
    fake_ort_error = type("InvalidArgument", (Exception,), module)
    status, err = _run_failing(fake_ort_error("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad dims\nmore"), capsys)
    assert status == EXIT_USER_ERROR and len(err) == 1 and err[0].startswith("error: ONNX Runtime rejected the input")


def test_a_bug_is_an_internal_error_with_the_traceback_only_under_debug(capsys):
    status, err = _run_failing(ZeroDivisionError("division by zero"), capsys)
    assert status == EXIT_INTERNAL_ERROR and len(err) == 1
    assert err[0].startswith("error: internal error (ZeroDivisionError: division by zero); please report it")
    status, err = _run_failing(ZeroDivisionError("division by zero"), capsys, debug=True)
    assert err[0] == "Traceback (most recent call last):" and err[-1].startswith("error: internal error")


def test_interrupt(capsys):
    status, err = _run_failing(KeyboardInterrupt(), capsys)
    assert status == EXIT_INTERRUPTED and err == ["interrupted"]


def test_debug_is_accepted_before_and_after_the_command(capsys):
    for argv in (["--debug", "bench", "missing-engine", "--out", "b.json"],
                 ["bench", "missing-engine", "--out", "b.json", "--debug"]):  # fmt: skip
        assert main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "Traceback (most recent call last):"  # --debug shows where any failure came from
        assert err[-1] == ("error: missing-engine: no such directory; pass an engine directory written by "
                           "'mimicnorm-deploy build'")  # fmt: skip


def test_argparse_errors_are_one_line(capsys):
    assert main(["calibrate"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: the following arguments are required: model, --calib, --out")
    assert err[0].endswith("see 'mimicnorm-deploy calibrate --help'")
