"""Command-line pieces the backends and the CLI share: the `Flag` a backend declares each of its
build options with (engines/<backend>/options.py `FLAGS`), and argparse `type=` converters that
refuse nonsense numbers.

Each converter returns the parsed value or raises `argparse.ArgumentTypeError`, which the parser
turns into one `error:` line naming the option (mimicnorm_deploy.failures.OneLineArgumentParser).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a backend's build options: `build --help` shows it in the
    backend's group, and its value, when given, sets the backend's Options field `field`.

    A switch (`const` given) sets the field to `const`; any other flag takes a value, converted by
    `type` and limited to `choices`. Several backends may declare the same flag (each declares
    --precision): it is shown once among the command's own options, with each backend's help and
    all their choices, and it must set the same field the same way in each.
    """

    name: str  # e.g. "--min-batch"
    field: str  # the Options field it sets
    help: str | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    const: Any = None

    @property
    def dest(self) -> str:
        """Where argparse stores it: named for the flag, so two backends' flags never share one."""
        return self.name.lstrip("-").replace("-", "_")


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(
    kind: type, low: float | None, high: float | None, *, low_open: bool, high_open: bool, unit: str = ""
) -> Callable:
    def convert(text: str) -> int | float:
        value = _number(text, kind)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is not {_describe(low, high, low_open, high_open)}{unit}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in "invalid <name> value" messages
    return convert


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


positive_int = _bounded(int, 0, None, low_open=True, high_open=False)
non_negative_int = _bounded(int, 0, None, low_open=False, high_open=False)
positive_float = _bounded(float, 0, None, low_open=True, high_open=False)
non_negative_float = _bounded(float, 0, None, low_open=False, high_open=False)
unit_interval = _bounded(float, 0, 1, low_open=False, high_open=True)  # [0, 1): momentum, label smoothing
percentile = _bounded(float, 0, 100, low_open=True, high_open=False)  # (0, 100]
percentage_points = _bounded(float, 0, 100, low_open=False, high_open=False,
                             unit=" percentage points (0.5 = half a point)")  # fmt: skip


def finite_float(text: str) -> float:
    return _number(text, float)


def positive_int_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers, e.g. `1,64`."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers such as 1,64")
    return tuple(positive_int(item) for item in items)


def non_negative_float_list(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers >= 0 (empty allowed), e.g. `80,110,135`."""
    if not text.strip():
        return ()
    return tuple(non_negative_float(item.strip()) for item in text.split(","))


def batch_sizes_or_sweep(text: str) -> tuple[int, ...] | str:
    """`positive_int_list`, or the word "sweep"."""
    return "sweep" if text.strip() == "sweep" else positive_int_list(text)
