import sys
from pathlib import Path

import pytest

# tests/ holds shared helpers (tiny_onnx) imported as plain modules.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Tiny valid artifacts of every kind (tests/fuzz_workspace.py), built once per session."""
    from fuzz_workspace import build_workspace

    return build_workspace(tmp_path_factory.mktemp("workspace") / "ws")
