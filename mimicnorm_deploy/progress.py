"""Progress of long work: a bar redrawn in place on a terminal, plain lines in CI logs.

Stages report progress as messages ("epoch 1 step 150/390 loss 0.52", "calibration batch 3/16",
"batch 64: 120/400 iterations"). On a terminal a message carrying a count (the last "N/M" in it)
redraws one status line with a bar; the line is kept once its count completes, and any other
message starts a new line. Anywhere else (a pipe, a CI log) every message is its own line, so
logs stay readable and greppable, but a count's intermediate lines come at most one per
`log_interval_s` seconds: its first and last always come, the rest only when that long has passed
(a line per batch gave the demo's log 40 lines per engine scored, saying no more than one).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

# "N/M" not inside a path or a word ("runs/2024/x" is no count).
COUNT = re.compile(r"(?<![\w/.])(\d+)/(\d+)(?![\w/])")
BAR_WIDTH = 24
LOG_INTERVAL_S = 10.0


def last_count(message: str) -> tuple[int, int] | None:
    """The last "done/total" in `message`, or None."""
    matches = COUNT.findall(message)
    if not matches:
        return None
    done, total = (int(v) for v in matches[-1])
    return (done, total) if total > 0 else None


def count_task(message: str) -> str:
    """What `message` counts: its text before the last "done/total" ("calibration batch ")."""
    *_, last = COUNT.finditer(message)
    return message[: last.start()]


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = min(width, round(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {min(100, 100 * done // total):3d}%"


class ProgressPrinter:
    """A `progress(message)` callable for the CLI; `is_tty` defaults to whether `stream` is a terminal."""

    def __init__(
        self,
        stream: TextIO | None = None,
        is_tty: bool | None = None,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._stream, self._is_tty = stream, is_tty
        self._open_width = 0  # characters of the status line being redrawn; 0 when none is open
        self._log_interval_s, self._clock = log_interval_s, clock
        self._logged_task: str | None = None  # the count last written as a log line, and when
        self._logged_at = 0.0

    @property
    def stream(self) -> TextIO:
        # No stream given: whatever sys.stderr is when a message comes (tests and callers redirect it).
        return self._stream if self._stream is not None else sys.stderr

    @property
    def is_tty(self) -> bool:
        return self.stream.isatty() if self._is_tty is None else self._is_tty

    def __call__(self, message: str) -> None:
        if not self.is_tty:
            self._log(message)
            return
        count = last_count(message)
        if count is None:
            self._close_line()
            self.stream.write(message + "\n")
        else:
            line = f"{message} {bar(*count)}"
            self.stream.write("\r" + line.ljust(self._open_width))
            self._open_width = len(line)
            if count[0] >= count[1]:
                self._close_line()
        self.stream.flush()

    def _log(self, message: str) -> None:
        count = last_count(message)
        if count is not None and count[0] < count[1]:
            task, now = count_task(message), self._clock()
            if task == self._logged_task and now - self._logged_at < self._log_interval_s:
                return
            self._logged_task, self._logged_at = task, now
        self.stream.write(message + "\n")
        self.stream.flush()

    def _close_line(self) -> None:
        if self._open_width:
            self.stream.write("\n")
            self._open_width = 0
