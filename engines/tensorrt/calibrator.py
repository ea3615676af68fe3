"""A TensorRT 10 INT8 calibrator that only reads our calibration cache (docs/TENSORRT.md section 3).

TensorRT asks a calibrator for its cache first and for image batches only when there is none, or
when it does not accept the one it got. This one has no images: the ranges were calibrated by
`mimicnorm-deploy calibrate`. A request for batches means TensorRT refused the cache; the
calibrator answers "no more batches" and records why, and the builder turns that into a one-line
error instead of an engine calibrated on nothing.
"""

from __future__ import annotations

from typing import Any

# Cache header algorithm (engines.trt_cache.ALGORITHMS) -> TensorRT's calibrator base class.
CALIBRATOR_CLASSES = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}


def cache_only_calibrator(cache_bytes: bytes, algorithm: str, cache_name: str) -> Any:
    """An instance of TensorRT's calibrator class for `algorithm` that hands TensorRT `cache_bytes`."""
    import tensorrt as trt

    base = getattr(trt, CALIBRATOR_CLASSES[algorithm])

    class CacheOnlyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self.refused: str | None = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            self.refused = (
                f"{cache_name}: TensorRT did not accept the calibration cache and asked for images instead; "
                "its header must name this TensorRT version and calibrator: re-run calibrate for this TensorRT"
            )
            return None  # no batches: TensorRT stops calibrating

        def read_calibration_cache(self) -> bytes:
            return cache_bytes

        def write_calibration_cache(self, cache: Any) -> None:
            return None  # the cache is ours; TensorRT's copy of it is not written back

    return CacheOnlyCalibrator()
