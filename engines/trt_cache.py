"""TensorRT 10 (and older) INT8 calibration cache: write and read the text format (numpy only).

What a TensorRT 10 build consumes, so it lives in `engines`: the TensorRT backend reads it on a
Jetson that has no onnxruntime, and `calibration` writes it through this module.

Format (docs/TENSORRT.md section 3): the first line is `TRT-<version>-<Algorithm>`, then one line per
tensor, `<tensor name>: <hex>`, the hex being the big-endian bit pattern of the float32 scale
amax / 127 (`3c010204` is 1/127, amax 1.0). TensorRT silently ignores a cache whose version or
algorithm does not match the build, so both must be right for the target.

`write_model_calibration_cache` writes the cache of calibrated `ActivationRanges` with a sidecar
JSON (`<cache>.json`) holding the model's sha256; `load_model_calibration_cache` refuses a cache
whose model has changed since, as TensorRT itself would silently use stale scales.

Version number: TensorRT 10's NvInferVersion.h defines NV_TENSORRT_VERSION as
major * 10000 + minor * 100 + patch (10.3.0 -> 100300, as in JetPack 6 caches:
`TRT-100300-EntropyCalibration2`); TensorRT 8 used major * 1000 + minor * 100 + patch (8.6.1 -> 8601).
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engines.artifacts import atomic_write_text, read_json, sha256_file, write_json
from engines.errors import UserError
from engines.schemas import TRT_CALIBRATION_CACHE
from engines.targets import parse_tensorrt_version

# TensorRT's CalibrationAlgoType names as they appear in cache headers.
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
JETPACK6_TRT_VERSION = 100300  # TensorRT 10.3.0


class CalibratedRanges(Protocol):
    """What the cache and its sidecar are written from (calibration.ranges.ActivationRanges)."""

    amax: dict[str, float]
    model_sha256: str
    calibration_sha256: str
    method: str
    percentile: float | None


_HEADER = re.compile(r"TRT-(\d+)-(\w+)")
_ENTRY = re.compile(r"(.+): ([0-9a-fA-F]{1,8})")


@dataclass(frozen=True)
class CacheHeader:
    trt_version: int  # NV_TENSORRT_VERSION of the TensorRT that is to read the cache
    algorithm: str

    @property
    def line(self) -> str:
        return f"TRT-{self.trt_version}-{self.algorithm}"


def trt_version_number(version: str) -> int:
    """NV_TENSORRT_VERSION for a version string such as tensorrt.__version__ ("10.3.0.30" -> 100300)."""
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:3]):
        raise ValueError(f"not a TensorRT version: {version!r}")
    major, minor, patch = (int(p) for p in (parts + ["0"])[:3])
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def cache_trt_version(version: str) -> int:
    """NV_TENSORRT_VERSION for the TensorRT that will read a cache, from "10.3" or "10.13.0".

    A one-line error for TensorRT 11 and later, which has no calibration caches (implicit INT8 was
    removed: it builds INT8 from Q/DQ models only), and for anything before TensorRT 8.
    """
    major, minor, patch = parse_tensorrt_version(version)  # a one-line error for what is no version
    if major >= 11:
        raise UserError(
            f"TensorRT {version} reads no calibration cache (implicit INT8 is gone since TensorRT 11); "
            "build from the Q/DQ model, or pass --trt-version of the TensorRT 10 on the device"
        )
    if major < 8:
        raise UserError(f"TensorRT {version} is older than this cache format knows; pass 8.x or 10.x")
    return trt_version_number(f"{major}.{minor}.{patch}")


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(bits: str) -> float:
    return struct.unpack(">f", int(bits, 16).to_bytes(4, "big"))[0]


def write_calibration_cache(
    path: str | os.PathLike,
    scales: dict[str, float],
    trt_version: int = JETPACK6_TRT_VERSION,
    algorithm: str = "EntropyCalibration2",
) -> Path:
    """Write `scales` (tensor name -> amax / 127) as a TensorRT calibration cache, atomically."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown calibration algorithm {algorithm!r}; TensorRT knows {', '.join(ALGORITHMS)}")
    lines = [CacheHeader(trt_version, algorithm).line]
    for name, scale in scales.items():
        if not name or "\n" in name:
            raise ValueError(f"tensor name {name!r} cannot be written on one cache line")
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale of {name!r} is {scale}; scales must be finite and non-negative")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_calibration_cache(path: str | os.PathLike) -> tuple[CacheHeader, dict[str, float]]:
    """Read a TensorRT calibration cache: its header and tensor name -> scale (amax / 127)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such calibration cache; check the path or re-run 'mimicnorm-deploy calibrate'")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text file; pass a TensorRT calibration cache") from None
    header = _HEADER.fullmatch(lines[0].strip()) if lines else None
    if header is None:
        raise UserError(f"{p}: first line is not 'TRT-<version>-<Algorithm>'; pass a TensorRT calibration cache")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        # The name may itself hold ": " (it is free text); the scale is what follows the last one.
        entry = _ENTRY.fullmatch(line.rstrip())
        if entry is None:
            raise UserError(f"{p}:{number}: not '<tensor>: <hex scale>': {line[:60]!r}; the cache is damaged")
        scales[entry.group(1)] = hex_to_scale(entry.group(2))
    return CacheHeader(int(header.group(1)), header.group(2)), scales


def sidecar_path(cache_path: str | os.PathLike) -> Path:
    return Path(f"{cache_path}.json")


def write_model_calibration_cache(
    path: str | os.PathLike,
    ranges: CalibratedRanges,
    trt_version: int = JETPACK6_TRT_VERSION,
    algorithm: str = "EntropyCalibration2",
) -> Path:
    """Write the TensorRT cache of `ranges` (scale amax / 127 under each FP32 ONNX tensor name) and its sidecar.

    `algorithm` names the calibrator class the TensorRT build will read the cache with (TensorRT
    drops a cache whose header names another), not how the ranges were found: the sidecar
    records that. EntropyCalibration2 is the one DLA accepts. `trt_version` is the
    NV_TENSORRT_VERSION of the TensorRT on the device (`cache_trt_version`).

    Tensors with amax 0 (constant zeros on every calibration image) are left out: a scale of 0 is
    no INT8 range, and TensorRT keeps a tensor the cache does not name in higher precision.
    """
    scales = {name: float(np.float32(amax) / np.float32(127)) for name, amax in ranges.amax.items() if amax > 0}
    write_calibration_cache(path, scales, trt_version, algorithm)
    write_json(
        sidecar_path(path),
        *TRT_CALIBRATION_CACHE,
        {
            "cache_sha256": sha256_file(path),
            "model_sha256": ranges.model_sha256,
            "calibration_sha256": ranges.calibration_sha256,
            "method": ranges.method,
            "percentile": ranges.percentile,
            "header": CacheHeader(trt_version, algorithm).line,
        },
    )
    return Path(path)


def load_model_calibration_cache(
    path: str | os.PathLike, model_path: str | os.PathLike
) -> tuple[CacheHeader, dict[str, float]]:
    """Read a cache written by write_model_calibration_cache, refusing it unless it belongs to `model_path`."""
    sidecar = sidecar_path(path)
    if Path(path).is_file() and not sidecar.is_file():
        raise UserError(
            f"{path}: no {sidecar.name} beside it, so nothing says which model it was calibrated on; "
            "re-run 'mimicnorm-deploy calibrate' for this model"
        )
    header, scales = read_calibration_cache(path)
    record = read_json(sidecar, *TRT_CALIBRATION_CACHE)
    if sha256_file(path) != record["cache_sha256"]:
        raise UserError(f"{path}: changed since it was written (sha256 differs from {sidecar.name}); re-run calibrate")
    if sha256_file(model_path) != record["model_sha256"]:
        raise UserError(
            f"{path}: stale calibration cache, made for another model than {model_path} "
            f"(sha256 {record['model_sha256'][:12]}...); re-run calibrate on this model"
        )
    return header, scales
