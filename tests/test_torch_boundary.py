"""The torch boundary is a folder boundary: only mimicnorm_deploy/training/ (and a backend folder
that exists to run torch, engines/torch/) may import torch, at any depth of any function.

Everything else is what a Jetson runs with the base install: the CLI, stages, pipeline and reports,
and the `calibration` and `engines` packages. tests/test_cli.py checks the same at run time by
running the torch-free commands in a process where torch cannot be imported.
"""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("mimicnorm_deploy", "calibration", "engines")
TORCH_FOLDERS = (REPO / "mimicnorm_deploy" / "training", REPO / "engines" / "torch")


def _imports_torch(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "torch" or name.startswith("torch.") for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def _torch_free_modules() -> list[Path]:
    modules = [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]
    return [path for path in modules if not any(path.is_relative_to(folder) for folder in TORCH_FOLDERS)]


def test_only_the_torch_folders_import_torch():
    modules = _torch_free_modules()
    assert len(modules) > 20  # the scan found the packages
    offenders = {
        str(path.relative_to(REPO)): lines
        for path in modules
        if (lines := _imports_torch(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}, f"torch imported outside {[str(f.relative_to(REPO)) for f in TORCH_FOLDERS]}"


def test_the_scan_sees_a_function_local_import():
    tree = ast.parse("def f():\n    if True:\n        from torch import nn\n    import numpy, torch.nn as tnn\n")
    assert _imports_torch(tree) == [3, 4]


def test_importing_engines_loads_no_backend():
    # The registry names engines.torch, but only get_backend("torch") may import it (and torch).
    code = ("import sys, engines, engines.registry, engines.bench, engines.targets\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'engines.torch')))\n"
            "print(loaded)\n")  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert completed.stdout.strip() == "[]"


def test_the_cli_and_every_backends_flags_load_no_runtime():
    # `build --help` must work on any machine: each backend's options module (its Options and FLAGS)
    # imports no runtime, and the backend packages export the rest lazily.
    code = ("import sys\nfrom engines.registry import BACKENDS, options_module\n"
            "from mimicnorm_deploy.cli import build_parser\nbuild_parser()\n"
            "for name in BACKENDS:\n    options_module(name)\n"
            "runtimes = ('torch', 'tensorrt', 'pycuda', 'cuda', 'onnxruntime')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in runtimes))\n")  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert completed.stdout.strip() == "[]"
