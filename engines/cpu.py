"""What this CPU can do for INT8 inference, read from /proc/cpuinfo.

Only the features that change INT8 results or speed are kept: an engine's manifest records them
and `check_engine` refuses to run an engine on a CPU whose INT8 path differs from the builder's.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# x86: AVX2/AVX-512 widths, VNNI (vpdpbusd: u8*s8 summed straight into int32) and AMX tiles.
# ARM: asimddp/dotprod (sdot/udot) and i8mm (smmla). Linux names ARM's dot product "asimddp";
# "dotprod" is the name other systems and compilers use. BF16 arithmetic (what makes a BF16 torch
# engine faster than FP32 rather than emulated): AVX512-BF16 and AMX-BF16 on x86, BF16 on ARM.
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "dotprod", "i8mm",
                  "avx512_bf16", "amx_bf16", "bf16")  # fmt: skip
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
X86_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_INT8_DOT_FLAGS = frozenset({"asimddp", "dotprod"})
X86_ARCHES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
ARM64_ARCHES = frozenset({"aarch64", "arm64"})
CPUINFO_PATH = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    arch: str
    model_name: str
    flags: tuple[str, ...]

    @property
    def is_x86(self) -> bool:
        return self.arch in X86_ARCHES

    @property
    def int8_dot_product(self) -> bool:
        """True when the CPU has an instruction that sums int8 products straight into int32."""
        if self.is_x86:
            return bool(X86_INT8_DOT_FLAGS.intersection(self.flags))
        if self.arch in ARM64_ARCHES:
            return bool(ARM_INT8_DOT_FLAGS.intersection(self.flags))
        return False

    @property
    def bf16_arithmetic(self) -> bool:
        """True when the CPU has BF16 dot-product instructions (else BF16 is converted to FP32 to compute)."""
        return bool(BF16_FLAGS.intersection(self.flags))

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "model_name": self.model_name,
            "flags": list(self.flags),
            "int8_dot_product": self.int8_dot_product,
        }


def _cpuinfo_fields(cpuinfo_text: str | None) -> dict[str, str]:
    """The first core's `key: value` lines of /proc/cpuinfo (or `cpuinfo_text`), keys lower-cased;
    empty where the file does not exist."""
    if cpuinfo_text is None:
        cpuinfo_text = CPUINFO_PATH.read_text(errors="replace") if CPUINFO_PATH.is_file() else ""
    fields: dict[str, str] = {}
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        # Every core repeats the block; the first core's values stand for all of them.
        if sep and key not in fields:
            fields[key] = value.strip()
    return fields


def cpu_features(cpuinfo_text: str | None = None, machine: str | None = None) -> CpuFeatures:
    """Parse /proc/cpuinfo (or `cpuinfo_text`); `machine` overrides platform.machine().

    Where /proc/cpuinfo does not exist (macOS, Windows) the flags are empty, so the CPU counts as
    having no INT8 dot product: the cautious answer.
    """
    this_machine = cpuinfo_text is None
    fields = _cpuinfo_fields(cpuinfo_text)
    arch = (machine or platform.machine()).lower()
    present = set((fields.get("flags") or fields.get("features") or "").split())
    # x86 names the CPU in "model name"; ARM kernels often have no such line, only "Hardware"
    # (SoC) or, on old ones, "Processor".
    model_name = fields.get("model name") or fields.get("hardware") or fields.get("processor", "")
    if model_name.isdigit():  # x86 "processor : 0" is the core index, not a name
        model_name = ""
    return CpuFeatures(
        arch=arch,
        model_name=model_name or (platform.processor() if this_machine else "") or "unknown",
        flags=tuple(flag for flag in RELEVANT_FLAGS if flag in present),
    )


def needs_reduce_range(features: CpuFeatures) -> bool:
    """Whether INT8 weights for ONNX Runtime on this CPU must be quantized to 7 bits.

    ONNX Runtime's INT8 kernels on x86 without VNNI multiply u8 activations by s8 weights with
    pmaddubsw, which adds each pair of products into an int16 that saturates when weights use the
    full int8 range (255 * 127 * 2 > 32767). 7-bit weights (`reduce_range=True`) keep the pair sum
    in range. VNNI/AMX accumulate straight into int32; ONNX Runtime's ARM kernels widen each
    product before accumulating (umull/sadalp or sdot), so neither needs it.
    """
    return features.is_x86 and not features.int8_dot_product


def cpu_device() -> dict:
    """The `device` entry of a CPU engine's manifest for this machine."""
    return {**cpu_features().to_dict(), "name": "cpu"}


def cpu_fingerprint(device: dict) -> str:
    """What a CPU engine is bound to, from its `device` entry: the architecture and whether INT8
    runs on dot-product instructions (which decides if 7-bit weights were needed), not the exact
    CPU model."""
    dot = "with" if device.get("int8_dot_product") else "without"
    return f"{device.get('arch', '?')} CPU {dot} INT8 dot product"


def cpu_kind(cpuinfo_text: str | None = None, machine: str | None = None) -> str:
    """The CPU's name, micro-architecture (x86: family and model; ARM: implementer and part) and
    relevant flags, e.g. "AMD EPYC, x86_64 family 25 model 1, avx2".

    CPU training is not bit-reproducible across micro-architectures (vector widths change the
    summation order), so a result that compares runs (scripts/parity_study.py) records this and
    compares only runs of one kind. Cloud CPUs often hide the exact model behind "AMD EPYC": the
    family and model numbers still tell Milan (25/1) from Genoa (25/17).
    """
    fields = _cpuinfo_fields(cpuinfo_text)
    features = cpu_features(cpuinfo_text, machine)
    if "cpu family" in fields:
        micro = f"family {fields['cpu family']} model {fields.get('model', '?')}"
    elif "cpu part" in fields:
        micro = f"implementer {fields.get('cpu implementer', '?')} part {fields['cpu part']}"
    else:
        micro = "micro-architecture unknown"
    flags = " ".join(features.flags) or "no relevant flags"
    return f"{features.model_name}, {features.arch} {micro}, {flags}"
