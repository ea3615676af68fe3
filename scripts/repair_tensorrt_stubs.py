"""Copy tensorrt-stubs' .pyi files into a directory mypy can read, repairing what does not parse.

The stubs (pybind11-generated, https://pypi.org/project/tensorrt-stubs/) have two kinds of lines
Python's grammar rejects: a parameter named `in` (a keyword) and a parameter without a default
after one with a default. Both are repaired mechanically, line by line, so a newer stubs release
drops in: `in` becomes `in_`, and a non-default parameter after a default one gets `= ...`.
Anything that still does not parse afterwards is an error, not silently skipped.

Usage: python scripts/repair_tensorrt_stubs.py SITE_DIR OUT_DIR
(SITE_DIR holds tensorrt/ and tensorrt_bindings/ as `pip install --target` left them.)
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:.*)$")


def split_parameters(text: str) -> list[str]:
    """Split a parameter list at its top-level commas (not those inside brackets or strings)."""
    parts, depth, start, quote = [], 0, 0, ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part for part in parts if part.strip()]


def repair_parameters(parameters: list[str]) -> list[str]:
    repaired, seen_default = [], False
    for parameter in parameters:
        name = parameter.split(":")[0].split("=")[0].strip()
        if name == "in":
            parameter = parameter.replace("in", "in_", 1)
        if name.startswith("*"):  # after *args or a bare *, parameters are keyword-only: no order rule
            seen_default = False
            repaired.append(parameter)
            continue
        if "=" in parameter:
            seen_default = True
        elif seen_default:
            parameter = f"{parameter.rstrip()} = ..."
        repaired.append(parameter)
    return repaired


def repair_line(line: str) -> str:
    match = _DEF.match(line)
    if match is None:
        return line
    head, parameters, tail = match.group(1), match.group(2), match.group(3)
    return head + ",".join(repair_parameters(split_parameters(parameters))) + tail


def repair_text(text: str) -> str:
    return "\n".join(repair_line(line) for line in text.split("\n"))


def repair_tree(site: Path, out: Path) -> list[Path]:
    written = []
    for package in PACKAGES:
        for stub in sorted((site / package).rglob("*.pyi")):
            target = out / stub.relative_to(site)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = repair_text(stub.read_text(encoding="utf-8"))
            ast.parse(text, str(stub))  # still broken: fail here, with the line, not inside mypy
            target.write_text(text, encoding="utf-8")
            written.append(target)
    if not written:
        raise SystemExit(f"error: no .pyi files under {site}; install tensorrt-stubs there (pip install --target)")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-2])
    for path in repair_tree(Path(sys.argv[1]), Path(sys.argv[2])):
        print(f"repaired {path}")
