"""``export``: one model -> ONNX / TFLite, fp32 / int8, each with its manifest and its parity.

Everything is converted, checked against PyTorch on held-out real images and kept in memory first;
files are written only when every requested artifact passed, so a failed export leaves nothing
behind.

With ``max_drop`` (points of top-1) the int8 file's top-1 is measured against the fp32 file's on
labelled held-out images (the test split of the calibration source, never calibrated on); when it
drops more, the most sensitive layers (``edgekit.calibration.sensitivity``) are kept float until it
fits, and the file is written as precision ``mixed`` with its float layers in the manifest. A file
within ``max_drop`` passes on that measured accuracy even when its logits' SQNR is below the floor
(FBNetV3-A trained on 30,000 Fashion-MNIST images: 15-17 dB, and within 0.2 points of fp32's
top-1), with a note.

An int8 file below the SQNR floor is calibrated again with each ``calib_retry`` method (clipping
estimators: the min/max range of a long-tailed activation spends most of its 256 levels on a few
outliers) and the most faithful one is kept; every method tried and its SQNR go into the manifest.

>>> # result = export("ghostnet_0_5", weights="w.pt", out="out/")  # doctest: +SKIP
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._checks import check_count, is_count
from .calibration.data import calibration_batch, load_dataset, preprocess, preprocessing_for, synthetic_batch
from .calibration.ranges import method_from_name
from .calibration.sensitivity import SensitivityReport, fallback, onnx_sensitivity, tflite_sensitivity, top1
from .models.profile import check_fits_in_memory
from .parity import ParityReport, compare
from .exporters.artifact import (FORMATS, Artifact, Calibration, Manifest, Preprocessing, check_out_dir, sha256_bytes,
                                 write_artifacts)

__all__ = ["ExportSettings", "ExportedFile", "export", "converts_in_parallel", "SQNR_FLOOR_DB"]

# Export refuses (without --force) an int8 file whose logits are further than this from PyTorch's on
# held-out real images. 20 dB = noise power 1 % of the signal's: every family here measures well above
# it when its calibration is sound; a broken quantization (wrong ranges, a mis-fused op) lands far below.
SQNR_FLOOR_DB = {"fp32": 60.0, "int8": 20.0}
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
SENSITIVITY_SAMPLES = 128  # held-out images per sensitivity pass (one pass per layer)
PARALLEL_MIN_PIXELS = 128 * 128
REFERENCE_CHUNK = 16  # images per PyTorch forward for the reference logits (large batches run slower)


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...] = ("onnx", "tflite")
    precisions: tuple[str, ...] = ("fp32", "int8")
    calib: str = "fashion-mnist"
    calib_samples: int = 256
    calib_method: str = "minmax"
    # methods tried in turn when an int8 file calibrated with calib_method is below the SQNR floor
    calib_retry: tuple[str, ...] = ("mse", "percentile")
    synthetic: bool = False  # calibrate on random data: only when asked, and said in the manifest
    holdout: int = 256  # held-out test images for the parity check
    io_dtype: str = "int8"  # TFLite int8 file inputs/outputs
    force: bool = False  # write int8 files below the SQNR floor anyway
    max_drop: float | None = None  # points of top-1 int8 may lose to fp32; beyond: layers fall back to float
    max_float_layers: int | None = None  # the most layers the fallback may keep float (None: any number)
    accuracy_samples: int = 1000  # labelled held-out test images for the top-1 of max_drop
    sensitivity: bool = False  # measure per-layer sensitivity of every int8 file (the manifest keeps it)
    # convert the TFLite graphs in a worker process while this one does the ONNX files. None: when both
    # formats are asked for, two CPUs are usable and the input has at least PARALLEL_MIN_PIXELS (below
    # that the worker's start-up, ~6 s of imports, costs more than the conversion it takes over)
    parallel: bool | None = None

    def __post_init__(self):
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "precisions", tuple(self.precisions))
        object.__setattr__(self, "calib_retry", tuple(self.calib_retry))
        for f in self.formats:
            if f not in FORMATS:
                raise ValueError(f"format {f!r} is not one of {FORMATS}")
        for p in self.precisions:
            if p not in SQNR_FLOOR_DB:
                raise ValueError(f"precision {p!r} is not one of {tuple(SQNR_FLOOR_DB)} (dynamic-range files "
                                 f"are not int8 and are not produced)")
        if self.parallel not in (None, True, False):
            raise ValueError(f"parallel {self.parallel!r} must be True, False or None (decide by input size)")
        if not self.formats or not self.precisions:
            raise ValueError("name at least one format and one precision")
        for method in (self.calib_method, *self.calib_retry):
            method_from_name(method)  # refuses an unknown method, listing the four
        if self.calib_samples < 1 or self.holdout < 1:
            raise ValueError(f"calib_samples {self.calib_samples} and holdout {self.holdout} must be >= 1")
        if self.io_dtype not in ("int8", "float32"):
            raise ValueError(f"io_dtype {self.io_dtype!r} must be 'int8' or 'float32'")
        self._check_fallback()

    def _check_fallback(self) -> None:
        if self.max_drop is not None:
            if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or \
                    not 0 <= self.max_drop <= 100:
                raise ValueError(f"max_drop {self.max_drop!r} must be points of top-1 in [0, 100], e.g. 0.5")
            if "int8" not in self.precisions:
                raise ValueError("max_drop applies to int8 files: add int8 to the precisions")
            if self.synthetic:
                raise ValueError("max_drop needs labelled real images to measure top-1; it cannot be used with "
                                 "synthetic calibration")
        if self.max_float_layers is not None and not is_count(self.max_float_layers):
            raise ValueError(f"max_float_layers {self.max_float_layers!r} must be an int >= 1 (or None: no limit)")
        check_count("accuracy_samples", self.accuracy_samples, hint=", e.g. 1000")


@dataclass(frozen=True)
class ExportedFile:
    artifact: Artifact
    parity: ParityReport
    size_bytes: int
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Labelled:
    """Labelled held-out images (preprocessed, NCHW) for the top-1 of ``max_drop``."""

    images: np.ndarray
    labels: np.ndarray
    dataset: str


@dataclass(frozen=True)
class _Accuracy:
    """Top-1 on the labelled held-out images of the fp32 file, the int8 file and the file kept (the
    int8 one, or the mixed one the fallback chose); drops in points, as the manifest gives them."""

    dataset: str
    samples: int
    fp32_top1: float
    int8_top1: float
    top1: float  # the file kept
    max_drop: float

    @property
    def int8_drop_points(self) -> float:
        return round(100 * (self.fp32_top1 - self.int8_top1), 3)

    @property
    def drop_points(self) -> float:
        return round(100 * (self.fp32_top1 - self.top1), 3)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": "test", "samples": self.samples, "fp32_top1": self.fp32_top1,
                "int8_top1": self.int8_top1, "int8_drop_points": self.int8_drop_points,
                "max_drop_points": self.max_drop, "top1": self.top1, "drop_points": self.drop_points}


@dataclass(frozen=True)
class _CalibrationTry:
    """A calibration method tried for an int8 file and its logits' SQNR against PyTorch (dB, 0.01)."""

    method: str
    sqnr_db: float

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "sqnr_db": self.sqnr_db}


@dataclass(frozen=True)
class _Calibrated:
    """The int8 files of the calibration kept, every calibration tried (in order) and the parity of
    the kept int8 file."""

    files: Any  # _OnnxFiles | _TfliteFiles
    tries: tuple[_CalibrationTry, ...]
    parity: ParityReport


@dataclass(frozen=True)
class _Extras:
    """What a file's manifest says beyond the file itself (an fp32 file's: nothing)."""

    metrics: Mapping[str, Any] = field(default_factory=dict)  # measured: sensitivity, accuracy, fallback
    tries: tuple[_CalibrationTry, ...] = ()  # int8 / mixed: the calibration methods tried, in order
    accuracy: _Accuracy | None = None  # with max_drop (``metrics`` holds it as the manifest gives it)
    float_layers: tuple[str, ...] = ()  # a mixed file's
    calibration_method: str | None = None  # the method kept, when not the one asked for
    note: str = ""

    def manifest_metrics(self) -> dict[str, Any]:
        tries = {"calibration_tries": [t.to_dict() for t in self.tries]} if self.tries else {}
        return {**self.metrics, **tries}


@dataclass(frozen=True)
class _Converted:
    """One file converted and kept in memory until every file has passed."""

    fmt: str
    precision: str  # "fp32" | "int8" | "mixed"
    exp: Any  # the converter's export (OnnxExport | TfliteExport): bytes, inputs, outputs, tools, notes
    extras: _Extras = field(default_factory=_Extras)
    parity: ParityReport | None = None  # against PyTorch on the held-out images; None: not measured yet


def export(model: nn.Module, *, name: str, out: str | Path, settings: ExportSettings = ExportSettings(),
           weights_file: str | Path | None = None, weights_sha256: str | None = None,
           input_size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, preset: str | None = None, source: Any = None) -> list[ExportedFile]:
    """Export ``model`` as every requested format x precision into ``out``. Input size and
    normalisation come from the model's ``default_cfg`` (zoo models), or from ``input_size`` (C, H, W)
    with ``mean`` / ``std`` or a ``preset`` for any other module (``models.external.describe``).
    ``source`` (``models.external.Source``) records where an external network came from, so
    ``validate`` and ``run --compare`` can build it again. Raises ``ValueError`` (and writes nothing)
    on a converter failure (naming the op and the module), an int8 file below ``SQNR_FLOOR_DB`` unless
    ``settings.force``, or, with ``settings.max_drop``, when no mixed-precision file is within the
    allowed drop."""
    out = Path(out)
    check_out_dir(out)  # created when the files are written
    if input_size is not None or not isinstance(getattr(model, "default_cfg", None), Mapping):
        if input_size is None:
            raise ValueError(f"{name} has no default_cfg saying its input size; pass input_size=(C, H, W) (and mean / "
                             f"std or a preset), or --input-size C,H,W on the command line")
        from .models.external import describe
        model = describe(model, input_size=input_size, mean=mean, std=std, preset=preset, name=name)
    model = model.eval()
    pre = preprocessing_for(model.default_cfg)
    c, h, w = model.default_cfg["input_size"]
    check_fits_in_memory(model, (c, h, w), batch=REFERENCE_CHUNK,
                         images=settings.holdout + (settings.calib_samples if "int8" in settings.precisions else 0))
    example = torch.zeros(1, c, h, w)
    background = _start_tflite_worker(model, example, settings)
    try:
        labelled = _labelled(pre, settings) if settings.max_drop is not None else None
        calib, calibration = _calibration(pre, settings) if "int8" in settings.precisions else (None, None)
        holdout = _holdout(pre, settings)
        pending = _checked(name, model, example, calib, holdout, labelled, settings, background)
    finally:
        if background is not None:
            background.close()
    files = [(out / f"{name}-{conv.fmt}-{conv.precision}{EXTENSIONS[conv.fmt]}",  # X.onnx / X.tflite + X.manifest.json
              conv.exp.model_bytes,
              _manifest(name, model, conv, pre, calibration, weights_file, weights_sha256, source))
             for conv in pending]
    return [ExportedFile(art, conv.parity, len(data), tuple(art.manifest.notes))
            for art, conv, (_, data, _) in zip(write_artifacts(files), pending, files)]


def converts_in_parallel(settings: ExportSettings, example: torch.Tensor) -> bool:
    """Whether ``export`` converts the TFLite files in a worker process beside the ONNX ones, for
    ``settings`` and an input like ``example`` (see ``ExportSettings.parallel``)."""
    if settings.parallel is not None:
        return settings.parallel and "tflite" in settings.formats
    from ._background import usable_cpus
    return (set(settings.formats) == {"onnx", "tflite"} and usable_cpus() >= 2
            and example.shape[2] * example.shape[3] >= PARALLEL_MIN_PIXELS)


def _start_tflite_worker(model: nn.Module, example: torch.Tensor, settings: ExportSettings):
    """The TFLite float conversions started in a worker process, or None (not parallel, or the model
    cannot be sent to another process: then they run here, in turn)."""
    if not converts_in_parallel(settings, example):
        return None
    from ._background import Background
    from .exporters.tflite import convert_float_graphs
    return Background.start(convert_float_graphs, model, example, fp32="fp32" in settings.precisions,
                            int8="int8" in settings.precisions, what="the TFLite conversion")


def _checked(name: str, model: nn.Module, example: torch.Tensor, calib, holdout: np.ndarray,
             labelled: _Labelled | None, settings: ExportSettings, background) -> list[_Converted]:
    """Every requested file converted and checked against PyTorch on ``holdout``, in memory."""
    reference = _torch_outputs(model, holdout)
    if len(reference) > 1 and (settings.max_drop is not None or settings.sensitivity):
        raise ValueError(f"{name} returns {len(reference)} outputs; --max-drop and --sensitivity measure the top-1 of "
                         f"one logits output: export it without them (every output is checked against PyTorch)")
    return [_faithful(name, conv, reference, holdout, settings, model)
            for fmt in settings.formats
            for conv in _converted(fmt, name, model, example, calib, holdout, reference, labelled, settings,
                                   background)]


def _faithful(name: str, conv: _Converted, reference: tuple[np.ndarray, ...], holdout: np.ndarray,
              s: ExportSettings, model: nn.Module) -> _Converted:
    """``conv`` with its parity against PyTorch; refused below its SQNR floor unless ``s.force`` or,
    with ``max_drop``, its measured top-1 accepts it (a note then says so)."""
    parity = conv.parity  # an int8 file's was measured when its calibration was chosen
    extras = conv.extras
    if parity is None or len(reference) > 1:  # the file run once: its worst output, and each one's
        reports = _per_output(reference, _outputs(conv.exp, holdout))
        parity = _worst(reports) if parity is None else parity
        if len(reports) > 1:
            extras = replace(extras, metrics={**extras.metrics, "parity_per_output": [
                {"output": info.name, **r.to_dict()} for info, r in zip(conv.exp.outputs, reports)]})
    floor = SQNR_FLOOR_DB["int8" if conv.precision == "mixed" else conv.precision]
    accepted = _accurate_enough(extras, s)
    if accepted is not None and parity.sqnr_db < floor:  # NaN is never accepted
        extras = replace(extras, note="; ".join(filter(None, (extras.note, accepted.format(sqnr=parity.sqnr_db,
                                                                                           floor=floor)))))
    elif not s.force:
        try:
            parity.check(min_sqnr_db=floor)
        except AssertionError as e:
            hint = "" if conv.precision == "fp32" else "; --max-drop POINTS accepts it on measured top-1 instead"
            why = f"\n{_rounding_said(model, holdout, reference, conv.exp)}" if conv.precision == "fp32" else ""
            raise ValueError(f"{conv.fmt} {conv.precision} of {name} is not faithful to PyTorch (SQNR floor {floor} "
                             f"dB; --force writes it anyway{hint}){_tries_said(extras)}:\n{e}{why}") from None
    return replace(conv, parity=parity, extras=extras)


# An fp32 file within this of PyTorch's own float32 error (both against float64) is as faithful as
# float32 allows: fbnetv3_b / _d with random weights at 224 px measured 10 dB below PyTorch's with
# ONNX Runtime, XNNPACK and TFLite's reference kernels alike, a converter fault lands far below.
ROUNDING_MARGIN_DB = 15.0


def _rounding_said(model: nn.Module, holdout: np.ndarray, reference: tuple[np.ndarray, ...], exp: Any) -> str:
    """Why an fp32 file is below its floor: the network amplifying float32 rounding (PyTorch's own
    float32 output is as far from float64 as the file's) or a converter fault (the file is further)."""
    import copy
    exact = _torch_outputs(copy.deepcopy(model).double(), holdout.astype(np.float64))
    own = _worst(_per_output(exact, reference)).sqnr_db
    file = _worst(_per_output(exact, _outputs(exp, holdout))).sqnr_db
    figures = (f"PyTorch's own float32 output is {own:.1f} dB from float64 on these images, the file's "
               f"{file:.1f} dB")
    if file >= own - ROUNDING_MARGIN_DB:
        return (f"{figures}: the network amplifies float rounding (random or untrained weights make a deep network "
                f"chaotic), not a converter fault; the file is as faithful as float32 allows (--force writes it)")
    return (f"{figures}: the file departs beyond float rounding, a converter fault; edgekit run FILE --compare "
            f"--per-layer (with --force to write it) names the first layer that departs")


def _torch_outputs(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``model``'s outputs on ``x``, run in chunks of ``REFERENCE_CHUNK`` images (large batches run slower)."""
    with torch.inference_mode():
        chunks = [_as_tuple(model(torch.from_numpy(x[i:i + REFERENCE_CHUNK])))
                  for i in range(0, len(x), REFERENCE_CHUNK)]
    return tuple(torch.cat(parts).numpy() for parts in zip(*chunks))


def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _outputs(exp: Any, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """``exp`` run on NCHW images: its outputs, each NCHW again when it is a channels-last map."""
    return tuple(info.to_nchw(y) for info, y in zip(exp.outputs, _as_tuple(exp(exp.inputs[0].from_nchw(x)))))


def _per_output(reference: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> list[ParityReport]:
    """Each of a file's outputs against PyTorch's, in order."""
    if len(got) != len(reference):
        raise ValueError(f"the file has {len(got)} outputs, PyTorch gives {len(reference)}")
    return [compare(ref, out) for ref, out in zip(reference, got)]


def _worst(reports: list[ParityReport]) -> ParityReport:
    """The output furthest from PyTorch (lowest SQNR, a NaN first), so a floor holds for every output."""
    return min(reports, key=lambda r: -math.inf if math.isnan(r.sqnr_db) else r.sqnr_db)


def _accurate_enough(extras: _Extras, s: ExportSettings) -> str | None:
    """With ``max_drop``, an int8 / mixed file whose measured top-1 drop is within it passes on
    accuracy, the stronger test, whatever its logits' SQNR: a note template saying so, else None."""
    acc = extras.accuracy
    if s.max_drop is None or acc is None or acc.drop_points > s.max_drop:
        return None
    return (f"logits SQNR {{sqnr:.1f}} dB is below the {{floor:g}} dB floor; accepted on measured top-1: a drop "
            f"of {acc.drop_points:.2f} points against fp32 on {acc.samples} {acc.dataset} images, within "
            f"max_drop {s.max_drop:g}")


def _tries_listed(tries: Sequence[_CalibrationTry]) -> str:
    """Calibration methods tried and the SQNR each gave: ``"minmax 16.34 dB, mse 17.72 dB"``."""
    return ", ".join(f"{t.method} {t.sqnr_db:.2f} dB" for t in tries)


def _tries_said(extras: _Extras) -> str:
    return "; calibrated with " + _tries_listed(extras.tries) if len(extras.tries) > 1 else ""


def _labelled(pre: Preprocessing, s: ExportSettings) -> _Labelled:
    """``s.accuracy_samples`` seeded test-split images of the calibration source, for the top-1 of
    ``max_drop``; refused when the source has no labels or no test split apart from the images
    calibration draws from."""
    test = load_dataset(s.calib, split="test", fit=pre)
    if test.labels is None:
        raise ValueError(f"max_drop measures top-1, but the calibration source {s.calib!r} has no labels; "
                         f"calibrate from fashion-mnist, IDX files with labels or class folders")
    if load_dataset(s.calib, split="train", limit=1).name == test.name:
        raise ValueError(f"the calibration source {s.calib!r} has no test split apart from the images calibration "
                         f"draws from, and max_drop's top-1 must come from images never calibrated on; give it "
                         f"train/ and test/ sub-folders")
    n = min(s.accuracy_samples, len(test))
    idx = np.sort(np.random.default_rng(2).choice(len(test), n, replace=False))
    return _Labelled(preprocess(test.images[idx], pre), np.asarray(test.labels[idx]), test.name)


def _calibration(pre: Preprocessing, s: ExportSettings) -> tuple[np.ndarray, Calibration]:
    if s.synthetic:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said instead in the manifest and the CLI output
            calib = synthetic_batch(pre, samples=s.calib_samples, seed=0)
        return calib, Calibration("synthetic", s.calib_samples, s.calib_method, synthetic=True)
    calib = calibration_batch(s.calib, pre, samples=s.calib_samples, seed=0, split="train")
    return calib, Calibration(s.calib, s.calib_samples, s.calib_method,
                              details=method_from_name(s.calib_method).to_dict())


HOLDOUT_MIN = 16  # fewer held-out images than this say little about parity


def _holdout(pre: Preprocessing, s: ExportSettings) -> np.ndarray:
    """Held-out images for parity: the test split of the calibration source (never calibrated on)."""
    if s.synthetic:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return synthetic_batch(pre, samples=s.holdout, seed=1)
    test = load_dataset(s.calib, split="test", fit=pre)  # read once, then drawn from as calibration draws
    if len(test) < min(s.holdout, HOLDOUT_MIN):
        raise ValueError(f"the calibration source {s.calib!r} has {len(test)} test images; parity against PyTorch "
                         f"needs at least {min(s.holdout, HOLDOUT_MIN)} held out (a test/ folder beside train/)")
    return calibration_batch(test.images, pre, samples=min(s.holdout, len(test)), seed=1)


def _converted(fmt: str, name: str, model: nn.Module, example: torch.Tensor, calib: np.ndarray | None,
               holdout: np.ndarray, reference: tuple[np.ndarray, ...], labelled: _Labelled | None, s: ExportSettings,
               background=None) -> Iterator[_Converted]:
    """``_convert``, with converter and quantizer failures turned into a ValueError that says which
    export failed (the converters' messages name the op and the module)."""
    from ._background import WorkerDied
    from .exporters.onnx import OnnxExportError
    from .exporters.tflite import ConversionError
    try:
        yield from _convert(fmt, model, example, calib, holdout, reference, labelled, s, background)
    except (OnnxExportError, ConversionError, WorkerDied) as e:
        raise ValueError(f"{fmt} export of {name} failed: {e}") from e


def _convert(fmt: str, model: nn.Module, example: torch.Tensor, calib: np.ndarray | None, holdout: np.ndarray,
             reference: tuple[np.ndarray, ...], labelled: _Labelled | None, s: ExportSettings,
             background=None) -> Iterator[_Converted]:
    """Yield the files of one format, fp32 then int8 (with its parity when it was measured already);
    int8 reuses the fp32 conversion where it can, is calibrated again when below the floor
    (``_calibrated``), and becomes "mixed" when ``max_drop`` makes layers fall back to float. The
    TFLite float graphs come from ``background`` (a worker converting them) when there is one."""
    if fmt == "onnx":
        from .exporters.onnx import export_onnx_fp32
        fp32 = export_onnx_fp32(model, example)
        if "fp32" in s.precisions:
            yield _Converted(fmt, "fp32", fp32)
        if "int8" in s.precisions:
            yield _int8(lambda method: _OnnxFiles(fp32, calib, replace(s, calib_method=method)), holdout,
                             reference, labelled, s)
    else:
        from .exporters.tflite import FloatGraphs, export_tflite_fp32
        graphs = background.result() if background is not None else FloatGraphs()
        if "fp32" in s.precisions:
            yield _Converted(fmt, "fp32", graphs.fp32 or export_tflite_fp32(model, example))
        if "int8" in s.precisions:
            yield _int8(lambda method: _TfliteFiles(model, example, calib, replace(s, calib_method=method),
                                                         graphs.int8), holdout, reference, labelled, s)


def _int8(make, holdout: np.ndarray, reference: tuple[np.ndarray, ...], labelled: _Labelled | None,
          s: ExportSettings) -> _Converted:
    """The int8 (or mixed) file of one format, from the files ``make(method)`` calibrates, with the
    parity measured while choosing the calibration when the file is that int8 one."""
    cal = _calibrated(make, holdout, reference, s)
    files = cal.files
    chosen = _with_tries(_int8_or_mixed(files, holdout, labelled, files.s), cal.tries, files.s.calib_method)
    return replace(chosen, exp=files.finish(chosen.exp), parity=cal.parity if chosen.exp is files.int8 else None)


def _calibrated(make, holdout: np.ndarray, reference: tuple[np.ndarray, ...], s: ExportSettings) -> _Calibrated:
    """The int8 files calibrated with ``s.calib_method``; while their SQNR against PyTorch on
    ``holdout`` is below the floor, calibrated again with each ``s.calib_retry`` method in turn. The
    most faithful one is kept, with every (method, SQNR) tried and its int8 file's parity."""
    tries, best = [], None
    for method in dict.fromkeys((s.calib_method, *s.calib_retry)):
        files = make(method)
        parity = _worst(_per_output(reference, _outputs(files.int8, holdout)))
        sqnr = parity.sqnr_db
        tries.append(_CalibrationTry(method, round(sqnr, 2) if math.isfinite(sqnr) else sqnr))
        score = sqnr if not math.isnan(sqnr) else -math.inf
        if best is None or score > best[0]:
            best = (score, files, parity)
        if score >= SQNR_FLOOR_DB["int8"]:
            break
    return _Calibrated(best[1], tuple(tries), best[2])


def _with_tries(conv: _Converted, tries: tuple[_CalibrationTry, ...], kept: str) -> _Converted:
    """An int8 / mixed file with the calibration methods tried in its manifest extras; a note when
    the one kept is not the method asked for."""
    extras = replace(conv.extras, tries=tries)
    if kept != tries[0].method:
        said = (f"{_tries_listed(tries[:1])} was below the {SQNR_FLOOR_DB['int8']:g} dB floor; calibrated "
                f"again: {_tries_listed(tries[1:])}; kept {kept}")
        extras = replace(extras, calibration_method=kept, note=f"{said}; {extras.note}" if extras.note else said)
    return replace(conv, extras=extras)


class _OnnxFiles:
    """The ONNX int8 file, its fp32 source and its mixed variants, for the fallback."""

    fmt = "onnx"

    def __init__(self, fp32: Any, calib: np.ndarray, s: ExportSettings):
        self.fp32, self.calib, self.s = fp32, calib, s
        self.int8 = self.final(())

    def final(self, layers) -> Any:
        from .exporters.onnx import quantize_onnx_int8
        return quantize_onnx_int8(self.fp32, self.calib, method=self.s.calib_method, speed_check=False,
                                  float_nodes=[n for layer in layers for n in layer.nodes])

    def finish(self, exp: Any) -> Any:
        """The file kept, timed against fp32 (only this one: not every calibration or fallback tried)."""
        from .exporters.onnx import with_speed_check
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the slower-int8 note goes into the manifest
            return with_speed_check(self.fp32, exp, self.calib[:1])

    def variant(self, layers) -> Any:
        """The mixed file's function, quantized with the int8 file's ranges (what ``final`` recomputes)."""
        from .exporters.onnx import inference_session, quantize_onnx_nodes
        data = quantize_onnx_nodes(self.fp32, self.int8.ranges, self.int8.settings,
                                   exclude=[n for layer in layers for n in layer.nodes])
        sess = inference_session(data, threads=None)
        name = self.fp32.inputs[0].name
        return lambda x: np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

    def reference(self, x: np.ndarray) -> np.ndarray:
        return self.fp32(x)

    def run(self, exp: Any, x: np.ndarray) -> np.ndarray:
        return exp(x)

    def sensitivity(self, x: np.ndarray) -> SensitivityReport:
        return onnx_sensitivity(self.fp32, self.int8, x)


class _TfliteFiles:
    """The TFLite int8 file, the float graph it was quantized from and its mixed variants."""

    fmt = "tflite"

    def __init__(self, model: nn.Module, example: torch.Tensor, calib: np.ndarray, s: ExportSettings, graph=None):
        from .exporters.tflite import plan_tflite_int8
        self.model, self.s = model, s
        self.plan = plan_tflite_int8(model, example, calib, method=s.calib_method, graph=graph)
        self.int8 = self.final(())

    def final(self, layers) -> Any:
        from .exporters.tflite import quantize_tflite
        return quantize_tflite(self.plan, io_dtype=self.s.io_dtype,
                               float_ops=[n for layer in layers for n in layer.nodes])

    def finish(self, exp: Any) -> Any:
        return exp

    def variant(self, layers) -> Any:
        exp = self.final(layers)
        return lambda x: self.run(exp, x)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return self.run(self.plan.fp32, x)

    def run(self, exp: Any, x: np.ndarray) -> np.ndarray:
        from .exporters.tflite import run_tflite
        return run_tflite(exp.model_bytes, exp.inputs[0].from_nchw(x))

    def sensitivity(self, x: np.ndarray) -> SensitivityReport:
        return tflite_sensitivity(self.plan, self.int8, self.model, x)


def _int8_or_mixed(files: Any, holdout: np.ndarray, labelled: _Labelled | None, s: ExportSettings) -> _Converted:
    """The int8 file when it is within ``max_drop`` (or none is set), else the mixed one (``_mixed``);
    with the measurements its manifest keeps."""
    report = files.sensitivity(holdout[:SENSITIVITY_SAMPLES]) if s.sensitivity else None
    measured = {} if report is None else {"sensitivity": report.to_dict()}
    if labelled is None:
        return _Converted(files.fmt, "int8", files.int8, _Extras(metrics=measured))
    x, y = labelled.images, labelled.labels
    fp32_top1 = top1(files.reference, x, y)
    int8_top1 = top1(lambda v: files.run(files.int8, v), x, y)
    acc = _Accuracy(labelled.dataset, int(len(x)), fp32_top1, int8_top1, top1=int8_top1, max_drop=s.max_drop)
    if 100 * (fp32_top1 - int8_top1) <= s.max_drop:
        return _Converted(files.fmt, "int8", files.int8, _Extras({**measured, "accuracy": acc.to_dict()}, accuracy=acc))
    return _mixed(files, holdout, labelled, s, report, measured, acc)


def _mixed(files: Any, holdout: np.ndarray, labelled: _Labelled, s: ExportSettings, report: SensitivityReport | None,
           measured: Mapping[str, Any], acc: _Accuracy) -> _Converted:
    """The mixed file with the fewest most-sensitive layers float that fit ``max_drop``; ``report``
    ranks the layers (None: measured here), ``measured`` is what the manifest keeps so far."""
    x, y = labelled.images, labelled.labels
    late = {}
    if report is None:  # measured for the fallback: the manifest lists it after the accuracy
        report = files.sensitivity(holdout[:SENSITIVITY_SAMPLES])
        late = {"sensitivity": report.to_dict()}
    _, layers, steps = fallback(report, files.variant, lambda predict: top1(predict, x, y),
                                reference_top1=acc.fp32_top1, int8_top1=acc.int8_top1, max_drop=s.max_drop,
                                max_float_layers=s.max_float_layers)
    exp = files.final(layers)
    acc = replace(acc, top1=top1(lambda v: files.run(exp, v), x, y))
    metrics = {**measured, "accuracy": acc.to_dict(), **late, "fallback": [step.to_dict() for step in steps],
               "float_nodes": [n for layer in layers for n in layer.nodes]}
    note = (f"{len(layers)} of {len(report.layers)} layers kept float: int8 lost "
            f"{acc.int8_drop_points:.2f} points of top-1, more than max_drop {s.max_drop:g}; this file "
            f"loses {acc.drop_points:.2f} on {acc.samples} {acc.dataset} test images")
    return _Converted(files.fmt, "mixed", exp, _Extras(metrics, accuracy=acc,
                                                       float_layers=tuple(layer.layer for layer in layers), note=note))


def _manifest(name: str, model: nn.Module, conv: _Converted, pre: Preprocessing, calibration: Calibration | None,
              weights_file, weights_sha256, source=None) -> Manifest:
    spec = getattr(model, "spec", None)
    exp, extras = conv.exp, conv.extras
    notes = list(exp.notes)
    quantized = conv.precision in ("int8", "mixed")
    if calibration is not None and calibration.synthetic and quantized:
        notes.append("calibrated on SYNTHETIC data: the int8 ranges do not come from real images")
    if extras.note:
        notes.append(extras.note)
    if conv.parity.warning:
        notes.append(conv.parity.warning)
    if calibration is not None and extras.calibration_method:
        method = extras.calibration_method
        calibration = replace(calibration, method=method, details=method_from_name(method).to_dict())
    metrics = {"parity": conv.parity.to_dict(), **dict(getattr(exp, "metrics", {}) or {}),
               **extras.manifest_metrics()}
    return Manifest(
        model=name, format=conv.fmt, precision=conv.precision, inputs=exp.inputs, outputs=exp.outputs,
        preprocessing=pre,
        file_sha256=sha256_bytes(exp.model_bytes), arch=None if spec is None else spec.to_dict(),
        weights_sha256=weights_sha256, weights_file=None if weights_file is None else str(Path(weights_file).resolve()),
        num_classes=model.default_cfg.get("num_classes"), calibration=calibration if quantized else None,
        float_layers=extras.float_layers, tools=dict(exp.tools), notes=tuple(notes), metrics=metrics,
        source=None if source is None else source.to_dict())
