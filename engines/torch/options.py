"""Build options of the torch backend and the `build` flags that set them (engines.arguments).

Imports no torch: the CLI reads FLAGS wherever it runs, torch installed or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.arguments import Flag
from engines.errors import UserError

# eager: the module as written; compile: torch.compile (Inductor; needs a C++ compiler on CPU);
# cuda-graph: one CUDA graph captured per input shape, then replayed (CUDA only).
MODES = ("eager", "compile", "cuda-graph")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class Options:
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    mode: str = "eager"
    precision: str = "fp32"  # weights and arithmetic; inputs and outputs stay float32
    channels_last: bool = False  # NHWC activations: what cuDNN's tensor-core kernels and oneDNN prefer

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"torch mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"torch precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.mode == "cuda-graph" and not self.device.startswith("cuda"):
            raise UserError(f"mode cuda-graph needs a CUDA device, not {self.device!r}; use eager or compile on CPU")


FLAGS = (
    Flag("--precision", "precision", "fp32 (default), fp16 or bf16 weights and arithmetic", choices=PRECISIONS),
    Flag("--device", "device", "cpu (default), cuda or cuda:N"),
    Flag("--mode", "mode", "eager (default); torch.compile (compiled at the first inference of each batch size); "
         "cuda-graph (one graph per input shape, replayed)", choices=MODES),  # fmt: skip
    Flag("--channels-last", "channels_last", "NHWC activations", const=True),
)
