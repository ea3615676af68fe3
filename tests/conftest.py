import sys
from pathlib import Path

# tests/ holds shared helpers (tiny_onnx) imported as plain modules.
sys.path.insert(0, str(Path(__file__).parent))
