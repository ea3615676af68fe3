"""Build options of the ONNX Runtime backend and the `build` flags that set them (engines.arguments).

Imports no runtime: the CLI reads FLAGS wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.arguments import Flag

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Options:
    """How to build (and run) an ONNX Runtime CPU engine."""

    precision: str | None = None  # fp32, fp16 or int8, checked against the model; None: the model's own
    graph_optimization: str = "all"  # a key of session.GRAPH_OPTIMIZATION_LEVELS; "disabled" simulates INT8
    intra_op_threads: int | None = None  # None: ONNX Runtime's default (one per core)

    def session_options(self) -> dict:
        """What the runner must create its session with (the manifest's backend_options)."""
        return {"graph_optimization": self.graph_optimization, "intra_op_threads": self.intra_op_threads}


FLAGS = (
    Flag("--precision", "precision", "checked against the model (default: the model's own)", choices=PRECISIONS),
    Flag("--simulate", "graph_optimization", "run Q/DQ as float ops (INT8 simulated)", const="disabled"),
)
