"""How the CLI ends when something goes wrong: always one line on stderr.

- Bad input or environment (UserError, argparse's complaints, the OSError family, ONNX Runtime
  rejecting an argument, running out of memory): `error: what is wrong; how to fix it`, exit 2.
- Ctrl-C: `interrupted`, exit 130 (the atomic writers have already removed their temporary files).
- Anything else is a bug in the toolkit: `error: internal error (...); please report it ...`,
  exit 70, with the traceback printed above it only under `--debug`.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from engines.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: apart from 1, which commands use for their own verdicts
EXIT_INTERRUPTED = 130
REPORT_HINT = "please report it with the output of the same command run with --debug"


class UsageError(UserError):
    """A command line argparse cannot parse (unknown option, missing or malformed value)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one `error:` line (the usage stays available with --help)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see '{self.prog} --help'")


def one_line(text: str) -> str:
    """`text` on one line: the lines of a multi-line message joined by '; '."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def expected_failure(exc: BaseException) -> str | None:
    """The one-line message for a failure caused by input or environment, or None for a bug."""
    if isinstance(exc, UserError):
        return one_line(str(exc))
    if isinstance(exc, MemoryError):
        return "out of memory; pass a smaller --batch-size or fewer images, or free memory"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
        return f"{where}{reason}; check the path, its permissions and the free space"
    # ONNX Runtime raises pybind11 classes (InvalidArgument, Fail, ...) from its C++ core with no
    # common public base; matched by module so the CLI does not import onnxruntime to catch them.
    if type(exc).__module__.startswith("onnxruntime"):
        reason = one_line(str(exc)) or type(exc).__name__
        return f"ONNX Runtime rejected the input ({reason}); check that the model and its inputs match"
    return None


def run_cli(parse: Callable[[], argparse.Namespace], debug: bool) -> int:
    """Parse the command line and run the command it names; print at most one line on failure."""
    try:
        args = parse()
        status = args.func(args)  # None, or a command's own exit status (compare's regression gate)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_USER_ERROR  # the reader went away (`| head`): nothing left to say, and nowhere to say it
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise  # --help and --version exit through argparse
        message = expected_failure(exc)
        if debug:
            traceback.print_exc()
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return EXIT_USER_ERROR
        reason = one_line(str(exc))
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        print(f"error: internal error ({detail}); {REPORT_HINT}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return status or 0
