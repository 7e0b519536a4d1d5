"""Measuring LUT units (blocks, stem, head, whole networks) through the device runners.

:class:`DeviceTimer` is a measuring function for :func:`~edgekit.lut.build.build_lut` and
:func:`~edgekit.lut.check.check_lut`. For every unit it

1. exports the PyTorch module with the same exporter and quantization a whole network gets
   (``edgekit.exporters.tflite``: ``export_tflite_fp32`` / ``plan_tflite_int8`` + ``quantize_tflite``;
   ``edgekit.exporters.onnx``: ``export_onnx_fp32`` / ``quantize_onnx_int8``; same calibration method
   and int8 I/O type),
2. writes it as an artifact with its manifest into ``work_dir`` (kept: a resumed build re-uses the
   file of a unit whose measurement was cut short, after its sha256 is verified),
3. runs it on the device with the measurement protocol (``Device.run``), appends the complete
   ``RunResult`` to the results store and returns its ``statistic`` in ms (``min``: the fastest
   timed run; ``median``); with ``passes`` > 1 the units of one call are swept that many times
   (every other sweep backwards) and each unit's figure is the smallest of its figures, every run
   stored.

Why ``min`` by default. On a shared machine the noise is additive and comes in spells: another
tenant on the same physical core slows every run of a measurement, or a whole process. The median
of a measurement then follows the spell, the fastest run does not. Measured on the FBNet v1 space at
64 px (TFLite int8, this machine, 50 networks; ``bench/lut.py``), the stored runs of two builds and
checks give 97 and 100 % of the held-out networks within +-10 % after the overhead fit when the LUT
entries and the networks are taken as minimums, 91 and 89 % when taken as medians.

int8 calibration. A whole network is calibrated on ``calib_samples`` Fashion-MNIST training images,
preprocessed as ``edgekit export --arch`` does for an ArchSpec (``edgekit.train.build_model``'s
``default_cfg``). A block cannot take images: its calibration inputs are the activations those same
images produce at its input in a *reference network* of the space (by default every layer the
``k3_e3`` candidate; random PyTorch weights, BN in eval mode), i.e. the images go through the reference
network's stem and preceding layers, and the activation tensor recorded at the first layer whose input
shape is the signature's input shape is the block's calibration set. The head gets the activations
at the reference network's last layer output; the stem gets the images. Every int8 unit (and the
reference network) first takes the BatchNorm statistics of its calibration inputs, so its activations
have a trained network's scale (``BN_STATISTICS``). The timed inputs are
``run_samples`` Fashion-MNIST *test* images, passed through the reference network the same way for
blocks.

The device fingerprint comes from the device itself (the agent's fingerprint in every
``RunResult``). With ``expect`` (a LUT's device record) every measurement is checked against it, so a
resumed build or a check run somewhere else is refused with the fields that differ.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._checks import check_count
from .build import NetworkUnit, Unit
from .junction import ChainUnit
from .lut import STATISTICS, LutMismatchError
from .space import BlockSig, FBNetV1Space

__all__ = ["DeviceTimer", "Measurement", "UnitExporter", "UnitLog", "REFERENCE_CANDIDATE", "check_same_kind", "cost",
           "fingerprint_differences"]

REFERENCE_CANDIDATE = "k3_e3"
CALIB_SOURCE = "fashion-mnist"
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
# int8 units: every BatchNorm's running statistics are those of the unit's calibration inputs (and the
# reference network's, whose activations calibrate the blocks), so every layer's output has the unit scale
# a trained network's has. With the initial statistics (mean 0, variance 1) a random network's activations
# shrink layer by layer, to 1e-6 of the input by the last blocks of a deep point; their int8 scales then
# fall outside what XNNPACK's int8 ADD and MUL take (ADD: each input's scale over the output's within
# [2^-10, 2^8)), the hard-swish's ``x + 3`` of those layers runs on the reference kernels between XNNPACK
# partitions, and the network costs up to a third more than the sum of its blocks, which were calibrated
# on activations of another scale. Trained weights do not shrink so; a LUT measures what they cost.
BN_STATISTICS = "calibration"
# the ArchSpec normalisation of ``edgekit.train.build_model`` (what ``edgekit export --arch`` uses)
_ARCH_MEAN, _ARCH_STD = 0.449, 0.226


@dataclass(frozen=True)
class UnitLog:
    """What one unit cost: export (0 when its artifact was re-used), the device run, the result."""

    key: str
    artifact: str
    export_s: float
    run_s: float
    ms: float  # the timer's statistic of this run
    cv: float
    stored_id: int | None
    reused: bool
    repeat: int = 0  # 0: the unit's first measurement in a call; 1, 2, ...: its later passes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Measurement:
    """One run of one unit on a device, not kept yet: the complete result, the file it ran, what
    exporting it cost (0 when re-used) and how long the device took."""

    result: Any  # edgekit.devices.base.RunResult
    artifact: str
    export_s: float
    reused: bool
    run_s: float


def _emulated_refusal(device: str) -> str:
    return (f"{device} is emulated: its timings are the emulator's, not the board's, and a LUT of them predicts "
            f"nothing about real hardware; measure on the real board, or pass --allow-emulated (allow_emulated=True) "
            f"to build one anyway (its header then says emulated)")


class DeviceTimer:
    """Export + run on a device, one unit at a time (see the module docstring).

    ``device`` is an address for ``edgekit.devices.open_device`` (``local``, ``ssh://...``,
    ``adb://...``) or a Device instance; ``store`` a ``ResultStore`` (default: the user's store;
    ``False`` keeps nothing)."""

    def __init__(self, space: FBNetV1Space, *, work_dir: str | Path, device: Any = "local", format: str = "tflite",
                 precision: str = "int8", protocol: Any = None, store: Any = None, calib_samples: int = 64,
                 calib_method: str = "minmax", io_dtype: str = "int8", run_samples: int = 4,
                 reference: Sequence[str] | None = None, expect: Mapping[str, Any] | None = None,
                 device_options: Mapping[str, Any] | None = None, workers: int = 1, passes: int = 1,
                 statistic: str = "min", allow_emulated: bool = False):
        from ..devices import open_device
        from ..devices.stats import Protocol

        check_count("workers", workers)
        check_count("passes", passes)
        if statistic not in STATISTICS:
            raise ValueError(f"statistic {statistic!r} is not one of {sorted(STATISTICS)}")
        self.passes, self.statistic = passes, statistic
        self.allow_emulated = allow_emulated
        if isinstance(device, str) and device.startswith("qemu://") and not allow_emulated:
            raise ValueError(_emulated_refusal(device))
        self.exporter = UnitExporter(space, work_dir=work_dir, format=format, precision=precision,
                                     calib_samples=calib_samples, calib_method=calib_method, io_dtype=io_dtype,
                                     run_samples=run_samples, reference=reference)
        self.workers = workers
        self.protocol = protocol if protocol is not None else Protocol()
        self.device = open_device(device, **dict(device_options or {})) if isinstance(device, str) else device
        if store is None:
            from ..devices.store import ResultStore
            store = ResultStore()
        self.store = store or None
        self.fingerprint: dict[str, Any] | None = None if expect is None else dict(expect)
        self.log: list[UnitLog] = []
        self._probed: dict[str, float] = {}
        self._exported_ahead: dict[str, float] = {}  # unit key -> its share of the wall time of ``prepare``
        self.latest_fingerprint: dict[str, Any] | None = None  # the last measurement's, every field

    @classmethod
    def for_lut(cls, lut: Any, space: FBNetV1Space, *, work_dir: str | Path, passes: int = 1,
                device_options: Mapping[str, Any] | None = None) -> "DeviceTimer":
        """A timer that measures networks as ``lut``'s were: its device (checked against the LUT's
        fingerprint), format, precision, threads and statistic; an emulated LUT's device is allowed,
        since the LUT was built on it on purpose."""
        from ..devices.stats import Protocol

        return cls(space, work_dir=work_dir, device=lut.device["device"], format=lut.format, precision=lut.precision,
                   protocol=Protocol(threads=lut.threads), expect=lut.device, device_options=device_options,
                   passes=passes, statistic=lut.statistic, allow_emulated=bool(lut.device.get("emulated")))

    @property
    def threads(self) -> int:
        return self.protocol.threads

    @property
    def space(self) -> FBNetV1Space:
        return self.exporter.space

    @property
    def format(self) -> str:
        return self.exporter.format

    @property
    def precision(self) -> str:
        return self.exporter.precision

    @property
    def work_dir(self) -> Path:
        return self.exporter.work_dir

    # ---- the measuring function ----------------------------------------------------------------
    def __call__(self, units: Sequence[Unit]) -> list[float]:
        """Each unit's latency in ms: the smallest of its figures (``statistic`` of one run) over
        ``passes`` sweeps of ``units``, every other sweep in reverse order. A slow spell on the
        device (another process, a clock change) lasts seconds and hits neighbouring units of one
        sweep; the later sweeps reach each unit at another time and in another process, so one
        disturbed run does not become the unit's figure."""
        self.prepare([u for u in units if u.key not in self._probed])
        runs: list[list[float]] = [[self._probed.pop(u.key)] if u.key in self._probed else [] for u in units]
        for sweep in range(self.passes):
            order = range(len(units)) if sweep % 2 == 0 else reversed(range(len(units)))
            for i in order:
                if len(runs[i]) <= sweep:
                    runs[i].append(self._measure(units[i], repeat=len(runs[i])))
        return [min(r) for r in runs]

    def probe(self, unit: Unit) -> dict[str, Any]:
        """Measure ``unit`` now (the next call asking for it gets this result, not a second run) and
        return the device fingerprint: what a new LUT's header records."""
        self._probed[unit.key] = self._measure(unit)
        assert self.fingerprint is not None
        return dict(self.fingerprint)

    def prepare(self, units: Sequence[Unit]) -> None:
        """Export the units whose files are not in ``work_dir`` yet, split over ``workers`` processes
        (this one and ``workers - 1`` started for the call), before any of them is measured: the
        converters' fixed cost per file runs on every core, and no export runs beside a timed loop."""
        missing = list({u.key: u for u in units if not self.exporter.exported(u)}.values())
        if self.workers < 2 or len(missing) < 2:
            return  # ``_measure`` exports what it needs, one file at a time
        from .._background import Background

        t0 = time.perf_counter()
        shards = [missing[i::self.workers] for i in range(self.workers)]
        jobs = [Background.start(_export_units, self.exporter, shard, what=f"the export of {len(shard)} LUT units")
                for shard in shards[1:] if shard]
        try:
            _export_units(self.exporter, shards[0])
            for job, shard in zip(jobs, shards[1:]):
                if job is None:  # the units could not be sent to another process
                    _export_units(self.exporter, shard)
                else:
                    job.result()
        finally:
            for job in jobs:
                if job is not None:
                    job.close()
        share = (time.perf_counter() - t0) / len(missing)
        self._exported_ahead.update({u.key: share for u in missing})

    def _measure(self, unit: Unit, repeat: int = 0) -> float:
        return self.record(unit, self.run_unit(unit), repeat)

    def run_unit(self, unit: Unit) -> Measurement:
        """Export ``unit`` if its file is not there yet and run it on the device once; nothing kept."""
        from ..devices.base import open_model

        path, export_s, reused = self.exporter.artifact(unit)
        if unit.key in self._exported_ahead:  # exported by ``prepare`` for this measurement, not re-used
            export_s, reused = self._exported_ahead.pop(unit.key), False
        model = open_model(path)  # verifies the file against its manifest's sha256
        inputs = self._run_inputs(unit, model.manifest.inputs[0])
        t0 = time.perf_counter()
        result = self.device.run(model, [inputs], protocol=self.protocol)
        run_s = time.perf_counter() - t0
        self._check_fingerprint(dict(result.fingerprint))
        return Measurement(result, str(path), export_s, reused, run_s)

    def record(self, unit: Unit, m: Measurement, repeat: int = 0) -> float:
        """Append ``m`` to the results store and the log; its figure in ms."""
        stored = self.store.record(m.result, artifact_path=m.artifact) if self.store is not None else None
        ms = _figure(m.result.stats, self.statistic)
        self.log.append(UnitLog(unit.key, m.artifact, m.export_s, m.run_s, float(ms), float(m.result.stats.cv),
                                stored, m.reused, repeat))
        return float(ms)

    def _check_fingerprint(self, fp: dict[str, Any]) -> None:
        if fp.get("emulated") and not self.allow_emulated:
            raise ValueError(_emulated_refusal(fp.get("device") or "this device"))
        self.latest_fingerprint = fp
        if self.fingerprint is None:
            self.fingerprint = fp
            return
        check_same_kind(self.fingerprint, fp)

    def _run_inputs(self, unit: Unit, spec: Any) -> np.ndarray:
        if isinstance(unit, NetworkUnit):
            x = self.exporter.calib_images(unit.spec.resolution)[1]
        else:
            x = self.exporter.calib_for(_first(unit))[1]
        if spec.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(x.reshape(len(x), *spec.shape), dtype=np.float32)

    # ---- summaries -----------------------------------------------------------------------------
    def cost(self) -> dict[str, Any]:
        """Mean seconds per unit spent exporting (fresh exports only) and on the device (all passes)."""
        return cost(self.log, self.passes)


def cost(log: Sequence[UnitLog], passes: int) -> dict[str, Any]:
    """What :meth:`DeviceTimer.cost` reports, over the log of one or several devices."""
    first = [u for u in log if u.repeat == 0]
    fresh = [u.export_s for u in first if not u.reused]
    per_unit = len(log) / len(first) if first else 0
    return {"units": len(first), "exported": len(fresh), "passes": passes,
            "export_s_mean": float(np.mean(fresh)) if fresh else None,
            "run_s_mean": float(np.mean([u.run_s for u in log]) * per_unit) if log else None}


def fingerprint_differences(lut: Mapping[str, Any], fp: Mapping[str, Any]) -> list[str]:
    """How a measurement's device fingerprint ``fp`` differs from a LUT's, over the keys the LUT
    recorded (a LUT measured by an older agent lacks the newer ones). Not a difference: the address,
    when the LUT lists it among its ``devices`` (several boards of a kind measured it), and the pinned
    cores on a CPU with one kind of core (two local devices pin different cores of one CPU)."""
    skip = {"devices"}
    if fp.get("device") in lut.get("devices", ()):
        skip.add("device")
    if "cpu_cores" in lut and len(lut["cpu_cores"] or {}) <= 1 and len(fp.get("cpu_cores") or {}) <= 1:
        skip.add("pinned_cores")
    return [f"device {k} is {fp.get(k)!r}, the LUT has {lut.get(k)!r}"
            for k in sorted(set(lut) - skip) if fp.get(k) != lut.get(k)]


def check_same_kind(lut: Mapping[str, Any], fp: Mapping[str, Any]) -> None:
    """Refuse a measurement made on another kind of device than the LUT's (see ``fingerprint_differences``)."""
    diff = fingerprint_differences(lut, fp)
    if diff:
        raise LutMismatchError(f"{fp.get('device', 'this device')} is not the kind of device the LUT was measured "
                               f"on: " + "; ".join(diff) + ". Build a LUT for this device with `edgekit lut build`")


def _figure(stats: Any, statistic: str) -> float:
    """One run's figure: its fastest run, or its median (the mean where a tool reports no median)."""
    if statistic == "min":
        return float(stats.min_ms)
    return float(stats.median_ms if stats.median_ms is not None else stats.mean_ms)


def _complete(path: Path) -> bool:
    """An exported file with its manifest beside it (written last, so the file is whole)."""
    from ..exporters.artifact import manifest_path
    return path.is_file() and manifest_path(path).is_file()


def _first(unit: Unit) -> BlockSig:
    """The signature whose input a block or chain unit takes: what calibrates and feeds it."""
    return unit.first if isinstance(unit, ChainUnit) else unit


def _export_units(exporter: "UnitExporter", units: Sequence[Unit]) -> int:
    """Export ``units`` into the exporter's work directory (what a worker process of ``prepare`` runs)."""
    for unit in units:
        exporter.artifact(unit)
    return len(units)


class UnitExporter:
    """Exports LUT units as artifacts into ``work_dir``, each file named by the unit and the recipe
    (so a file already there is that unit's, and is re-used). Picklable: ``DeviceTimer.prepare``
    hands it to worker processes."""

    def __init__(self, space: FBNetV1Space, *, work_dir: str | Path, format: str = "tflite", precision: str = "int8",
                 calib_samples: int = 64, calib_method: str = "minmax", io_dtype: str = "int8", run_samples: int = 4,
                 reference: Sequence[str] | None = None):
        if format not in EXTENSIONS:
            raise ValueError(f"format {format!r}: device measurements export {' or '.join(EXTENSIONS)} files")
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision {precision!r} must be fp32 or int8")
        for label, v in (("calib_samples", calib_samples), ("run_samples", run_samples)):
            check_count(label, v)
        self.space, self.format, self.precision = space, format, precision
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.calib_samples, self.calib_method, self.io_dtype = calib_samples, calib_method, io_dtype
        self.run_samples = run_samples
        if hasattr(space, "check_choices"):  # fbnet-v1: a candidate per layer
            self.reference = tuple(reference) if reference is not None else (REFERENCE_CANDIDATE,) * len(space.layers)
            space.check_choices(self.reference)
        else:  # fbnet-v2: the widest point at each resolution; a narrower input is its first channels
            if reference is not None:
                raise ValueError(f"{space.name} calibrates blocks on its widest point's activations; it takes no "
                                 f"reference choices")
            self.reference = ("widest",)
        self._activations: tuple[dict[Any, np.ndarray], dict[Any, np.ndarray]] | None = None
        self._images: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def path(self, unit: Unit) -> Path:
        ident = json.dumps({"unit": unit.key, "space": self.space.to_dict(), **self._recipe()}, sort_keys=True)
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        kind = "network" if isinstance(unit, NetworkUnit) else unit.kind
        return self.work_dir / f"lut-{kind}-{digest}-{self.format}-{self.precision}{EXTENSIONS[self.format]}"

    def exported(self, unit: Unit) -> bool:
        return _complete(self.path(unit))

    # ---- export --------------------------------------------------------------------------------
    def _recipe(self) -> dict[str, Any]:
        r: dict[str, Any] = {"format": self.format, "precision": self.precision}
        if self.precision == "int8":
            r.update(calib=CALIB_SOURCE, calib_samples=self.calib_samples, calib_method=self.calib_method,
                     reference=list(self.reference), batchnorm=BN_STATISTICS)
            if self.format == "tflite":
                r["io_dtype"] = self.io_dtype
        return r

    def artifact(self, unit: Unit) -> tuple[Path, float, bool]:
        from ..exporters.artifact import write_artifact

        path = self.path(unit)
        if _complete(path):
            return path, 0.0, True
        t0 = time.perf_counter()
        module, example, calib, pre, arch, classes = self._module(unit)
        exp = self._export(module, example, calib)
        manifest = self._manifest(unit, exp, pre, arch, classes, 0 if calib is None else len(calib))
        write_artifact(path, exp.model_bytes, manifest)
        return path, time.perf_counter() - t0, False

    def _module(self, unit: Unit):
        from ..calibration.data import preprocessing_for
        from ..train import build_model

        torch.manual_seed(0)
        if isinstance(unit, NetworkUnit):
            model = build_model(arch=unit.spec, num_classes=unit.num_classes, in_chans=unit.in_chans,
                                resolution=unit.spec.resolution).eval()
            pre = preprocessing_for(model.default_cfg)
            calib = self.calib_images(unit.spec.resolution)[0] if self.precision == "int8" else None
            _trained_statistics(model, calib)
            c, h, w = model.default_cfg["input_size"]
            return model, torch.zeros(1, c, h, w), calib, pre, unit.spec.to_dict(), unit.num_classes
        if not isinstance(unit, (BlockSig, ChainUnit)):
            raise TypeError(f"cannot export {type(unit).__name__}: a unit is a BlockSig, a ChainUnit or a NetworkUnit")
        first = _first(unit)
        calib = self.calib_for(first)[0] if self.precision == "int8" else None
        pre = preprocessing_for(self._default_cfg(unit.in_shape[1])) if first.kind == "stem" else None
        torch.manual_seed(0)  # after calib_for, which may build the reference network: same weights in any order
        module = unit.module().eval()
        _trained_statistics(module, calib)
        return module, torch.zeros(1, *unit.in_shape), calib, pre, None, None

    def _export(self, module: torch.nn.Module, example: torch.Tensor, calib: np.ndarray | None):
        torch.set_num_threads(1)
        if self.format == "tflite":
            from ..exporters.tflite import export_tflite_fp32, plan_tflite_int8, quantize_tflite
            if self.precision == "fp32":
                return export_tflite_fp32(module, example)
            return quantize_tflite(plan_tflite_int8(module, example, calib, method=self.calib_method),
                                   io_dtype=self.io_dtype)
        from ..exporters.onnx import export_onnx_fp32, quantize_onnx_int8
        fp32 = export_onnx_fp32(module, example)
        if self.precision == "fp32":
            return fp32
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the slower-int8 note goes into the manifest
            return quantize_onnx_int8(fp32, calib, method=self.calib_method)

    def _manifest(self, unit: Unit, exp: Any, pre: Any, arch: Any, classes: int | None, n_calib: int):
        from ..exporters.artifact import Calibration, Manifest, sha256_bytes

        calibration = None
        if self.precision == "int8":
            images = isinstance(unit, NetworkUnit) or _first(unit).kind == "stem"
            what = ("Fashion-MNIST train images" if images else
                    "activations of Fashion-MNIST train images at this input in the reference network")
            calibration = Calibration(CALIB_SOURCE, n_calib, self.calib_method,
                                      details={"inputs": what, "reference": list(self.reference)})
        name = unit.spec.name if isinstance(unit, NetworkUnit) else f"lut-{unit.kind}"
        notes = (*getattr(exp, "notes", ()), f"LUT unit {unit.key}; random PyTorch weights (latency only)")
        return Manifest(model=name, format=self.format, precision=self.precision, inputs=exp.inputs,
                        outputs=exp.outputs, preprocessing=pre, file_sha256=sha256_bytes(exp.model_bytes), arch=arch,
                        num_classes=classes, calibration=calibration, tools=dict(exp.tools), notes=notes,
                        metrics=dict(getattr(exp, "metrics", {}) or {}))

    # ---- inputs --------------------------------------------------------------------------------
    def _default_cfg(self, side: int | None = None) -> dict[str, Any]:
        c, side = self.space.in_chans, side or self.space.resolution
        return {"input_size": [c, side, side], "mean": [_ARCH_MEAN] * c, "std": [_ARCH_STD] * c}

    def calib_images(self, side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(calibration images from the train split, timed-run images from the test split), NCHW, at
        input side ``side`` (default: the space's resolution)."""
        side = side or self.space.resolution
        if side not in self._images:
            from ..calibration.data import calibration_batch, preprocessing_for
            pre = preprocessing_for(self._default_cfg(side))
            self._images[side] = (
                calibration_batch(CALIB_SOURCE, pre, samples=self.calib_samples, seed=0, split="train"),
                calibration_batch(CALIB_SOURCE, pre, samples=self.run_samples, seed=1, split="test"))
        return self._images[side]

    def calib_for(self, sig: BlockSig) -> tuple[np.ndarray, np.ndarray]:
        """(calibration, timed-run) inputs of a stem / block / head: images or reference activations
        (the first channels of a wider one at the same side, as a narrower network of a channel
        search sees them)."""
        if sig.kind == "stem":
            return self.calib_images(sig.in_shape[1])
        kind = "head" if sig.kind == "head" else "block"
        calib, run = self.warm()
        c, h, w = sig.in_shape
        key = (kind, c, h, w)
        if key not in calib:
            wider = sorted(k for k in calib if k[0] == kind and k[2:] == (h, w) and k[1] >= c)
            if not wider:
                raise ValueError(f"no layer of the reference network takes input {sig.in_shape} or a wider one at "
                                 f"that side ({sig.key}); the signature is not of this space")
            key = wider[0]
        return calib[key][:, :c], run[key][:, :c]

    def warm(self) -> tuple[dict[Any, np.ndarray], dict[Any, np.ndarray]]:
        """The reference network's (calibration, timed-run) activations, computed on the first call:
        called before this exporter is sent to other processes (Ray tasks and actors), each copy
        carries them instead of computing them again."""
        if self._activations is None:
            calib: dict[Any, np.ndarray] = {}
            run: dict[Any, np.ndarray] = {}
            for spec in self._reference_specs():
                seen_calib, seen_run = self._reference_activations(spec)
                calib.update(seen_calib)
                run.update(seen_run)
            self._activations = (calib, run)
        return self._activations

    def _reference_specs(self) -> list[Any]:
        if self.reference != ("widest",):
            return [self.space.spec(self.reference, name="lut-reference")]
        widest = self.space.widest()
        return [self.space.spec({**widest, "resolution": r}, name=f"lut-reference-{r}") for r in self.space.resolutions]

    @torch.no_grad()
    def _reference_activations(self, spec: Any) -> tuple[dict[Any, np.ndarray], dict[Any, np.ndarray]]:
        """For the calibration images and the timed-run images at ``spec``'s resolution, one reference
        network (built and, in int8, given its calibration images' statistics once):
        ``("block", C, H, W)`` -> the activations at the first layer input of that shape,
        ``("head", C, H, W)`` -> those at the head."""
        from ..models.arch import from_arch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        net = from_arch(spec, num_classes=self.space.num_classes, in_chans=self.space.in_chans).eval()
        calib, run = self.calib_images(spec.resolution)
        if self.precision == "int8":
            _trained_statistics(net, calib)

        def walk(images: np.ndarray) -> dict[Any, np.ndarray]:
            x = net.stem(torch.from_numpy(images))
            seen: dict[Any, np.ndarray] = {}
            for stage in net.stages:
                for block in stage:
                    seen.setdefault(("block", *x.shape[1:]), x.numpy().copy())
                    x = block(x)
            seen[("head", *x.shape[1:])] = x.numpy().copy()
            return seen

        return walk(calib), walk(run)


def _trained_statistics(module: torch.nn.Module, calib: np.ndarray | None) -> None:
    """Give a random-weight int8 unit the BatchNorm statistics of its calibration inputs (nothing
    for fp32, which has none): see ``BN_STATISTICS``."""
    if calib is None:
        return
    from ..train import recalibrate_bn

    with torch.no_grad():
        recalibrate_bn(module, np.ascontiguousarray(calib, dtype=np.float32))


def build_on_device(space: FBNetV1Space, timer: DeviceTimer, *, out: str | Path | None = None, chunk: int = 8,
                    progress: Any = None, signatures: Sequence[BlockSig] | None = None):
    """``build_lut`` through ``timer``, with the device's own fingerprint in the header.

    Resuming ``out``: the stored LUT must be of this device address, format, precision and threads,
    and every new measurement must come with the stored fingerprint. A new LUT: the first missing
    unit is measured first and its fingerprint becomes the header (it is not measured twice)."""
    from .build import build_lut, plan
    from .lut import load_lut, save_lut

    address = getattr(timer.device, "address", None)
    if out is not None and Path(out).exists():
        stored = load_lut(out, device=address, format=timer.format, precision=timer.precision,
                          threads=timer.threads, statistic=timer.statistic)
        if timer.fingerprint is None:
            timer.fingerprint = dict(stored.device)
        device = dict(stored.device)
    else:
        todo = plan(space, signatures=signatures)
        device = timer.probe(todo[0]) if todo else {"device": address}
    lut = build_lut(space, timer, device=device, format=timer.format, precision=timer.precision,
                    threads=timer.threads, out=out, chunk=chunk, progress=progress, statistic=timer.statistic,
                    signatures=signatures)
    adopted = lut.adopting(timer.latest_fingerprint)
    if adopted is not lut and out is not None:
        save_lut(adopted, out)
    return adopted
