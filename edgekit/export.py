"""``export``: one model -> ONNX / TFLite, fp32 / int8, each with its manifest and its parity.

Everything is converted, checked against PyTorch on held-out real images and kept in memory first;
files are written only when every requested artifact passed, so a failed export leaves nothing
behind.

>>> # result = export("ghostnet_0_5", weights="w.pt", out="out/")  # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .calibration.data import calibration_batch, preprocessing_for, synthetic_batch
from .calibration.ranges import method_from_name
from .parity import ParityReport, compare
from .exporters.artifact import FORMATS, Artifact, Calibration, Manifest, Preprocessing, sha256_bytes, write_artifact

__all__ = ["ExportSettings", "ExportedFile", "export", "SQNR_FLOOR_DB"]

# Export refuses (without --force) an int8 file whose logits are further than this from PyTorch's on
# held-out real images. 20 dB = noise power 1 % of the signal's: every family here measures well above
# it when its calibration is sound; a broken quantization (wrong ranges, a mis-fused op) lands far below.
SQNR_FLOOR_DB = {"fp32": 60.0, "int8": 20.0}
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...] = ("onnx", "tflite")
    precisions: tuple[str, ...] = ("fp32", "int8")
    calib: str = "fashion-mnist"
    calib_samples: int = 256
    calib_method: str = "minmax"
    synthetic: bool = False  # calibrate on random data: only when asked, and said in the manifest
    holdout: int = 256  # held-out test images for the parity check
    io_dtype: str = "int8"  # TFLite int8 file inputs/outputs
    force: bool = False  # write int8 files below the SQNR floor anyway

    def __post_init__(self):
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "precisions", tuple(self.precisions))
        for f in self.formats:
            if f not in FORMATS:
                raise ValueError(f"format {f!r} is not one of {FORMATS}")
        for p in self.precisions:
            if p not in SQNR_FLOOR_DB:
                raise ValueError(f"precision {p!r} is not one of {tuple(SQNR_FLOOR_DB)} (dynamic-range files "
                                 f"are not int8 and are not produced)")
        if not self.formats or not self.precisions:
            raise ValueError("name at least one format and one precision")
        method_from_name(self.calib_method)  # refuses an unknown method, listing the four
        if self.calib_samples < 1 or self.holdout < 1:
            raise ValueError(f"calib_samples {self.calib_samples} and holdout {self.holdout} must be >= 1")
        if self.io_dtype not in ("int8", "float32"):
            raise ValueError(f"io_dtype {self.io_dtype!r} must be 'int8' or 'float32'")


@dataclass(frozen=True)
class ExportedFile:
    artifact: Artifact
    parity: ParityReport
    size_bytes: int
    notes: tuple[str, ...] = field(default=())


def export(model: nn.Module, *, name: str, out: str | Path, settings: ExportSettings = ExportSettings(),
           weights_file: str | Path | None = None, weights_sha256: str | None = None) -> list[ExportedFile]:
    """Export ``model`` (its ``default_cfg`` gives input size and normalisation) as every requested
    format x precision into ``out``. Raises ``ValueError`` (and writes nothing) on a converter failure
    or an int8 file below ``SQNR_FLOOR_DB`` unless ``settings.force``."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"output directory {out} does not exist; create it first")
    model = model.eval()
    pre = preprocessing_for(model.default_cfg)
    c, h, w = model.default_cfg["input_size"]
    example = torch.zeros(1, c, h, w)
    calib, calibration = _calibration(pre, settings) if "int8" in settings.precisions else (None, None)
    holdout = _holdout(pre, settings)
    with torch.no_grad():
        reference = model(torch.from_numpy(holdout)).numpy()
    pending = []
    for fmt in settings.formats:
        for precision, exp in _convert(fmt, model, example, calib, settings):
            got = exp(holdout.transpose(0, 2, 3, 1) if exp.inputs[0].layout == "NHWC" else holdout)
            parity = compare(reference, got)
            floor = SQNR_FLOOR_DB[precision]
            if not settings.force:
                try:
                    parity.check(min_sqnr_db=floor)
                except AssertionError as e:
                    raise ValueError(f"{fmt} {precision} of {name} is not faithful to PyTorch (SQNR floor {floor} dB; "
                                     f"--force writes it anyway):\n{e}") from None
            pending.append((fmt, precision, exp, parity))
    written = []
    for fmt, precision, exp, parity in pending:
        manifest = _manifest(name, model, fmt, precision, exp, parity, pre, calibration, weights_file, weights_sha256)
        path = out / f"{name}-{fmt}-{precision}{EXTENSIONS[fmt]}"  # X.onnx / X.tflite + X.manifest.json
        written.append(ExportedFile(write_artifact(path, exp.model_bytes, manifest), parity, len(exp.model_bytes),
                                    tuple(manifest.notes)))
    return written


def _calibration(pre: Preprocessing, s: ExportSettings) -> tuple[np.ndarray, Calibration]:
    if s.synthetic:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said instead in the manifest and the CLI output
            calib = synthetic_batch(pre, samples=s.calib_samples, seed=0)
        return calib, Calibration("synthetic", s.calib_samples, s.calib_method, synthetic=True)
    calib = calibration_batch(s.calib, pre, samples=s.calib_samples, seed=0, split="train")
    return calib, Calibration(s.calib, s.calib_samples, s.calib_method,
                              details=method_from_name(s.calib_method).to_dict())


def _holdout(pre: Preprocessing, s: ExportSettings) -> np.ndarray:
    """Held-out images for parity: the test split of the calibration source (never calibrated on)."""
    if s.synthetic:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return synthetic_batch(pre, samples=s.holdout, seed=1)
    return calibration_batch(s.calib, pre, samples=s.holdout, seed=1, split="test")


def _convert(fmt: str, model: nn.Module, example: torch.Tensor, calib: np.ndarray | None, s: ExportSettings):
    """Yield (precision, export) for one format; int8 reuses the fp32 conversion where it can."""
    if fmt == "onnx":
        from .exporters.onnx import export_onnx_fp32, quantize_onnx_int8
        fp32 = export_onnx_fp32(model, example)
        if "fp32" in s.precisions:
            yield "fp32", fp32
        if "int8" in s.precisions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the slower-int8 note goes into the manifest
                yield "int8", quantize_onnx_int8(fp32, calib, method=s.calib_method)
    else:
        from .exporters.tflite import export_tflite_fp32, export_tflite_int8
        if "fp32" in s.precisions:
            yield "fp32", export_tflite_fp32(model, example)
        if "int8" in s.precisions:
            yield "int8", export_tflite_int8(model, example, calib, io_dtype=s.io_dtype, method=s.calib_method)


def _manifest(name: str, model: nn.Module, fmt: str, precision: str, exp: Any, parity: ParityReport,
              pre: Preprocessing, calibration: Calibration | None, weights_file, weights_sha256) -> Manifest:
    spec = getattr(model, "spec", None)
    notes = list(exp.notes)
    if calibration is not None and calibration.synthetic and precision == "int8":
        notes.append("calibrated on SYNTHETIC data: the int8 ranges do not come from real images")
    metrics = {"parity": parity.to_dict(), **dict(getattr(exp, "metrics", {}) or {})}
    return Manifest(
        model=name, format=fmt, precision=precision, inputs=exp.inputs, outputs=exp.outputs, preprocessing=pre,
        file_sha256=sha256_bytes(exp.model_bytes), arch=None if spec is None else spec.to_dict(),
        weights_sha256=weights_sha256, weights_file=None if weights_file is None else str(Path(weights_file).resolve()),
        num_classes=model.default_cfg.get("num_classes"), calibration=calibration if precision == "int8" else None,
        tools=dict(exp.tools), notes=tuple(notes), metrics=metrics)
