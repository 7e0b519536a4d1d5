"""Device against device: one file run on two devices on the same inputs, compared in its own units.

"Does my Pi compute what my laptop computed?" An int8 output is compared in int8 steps (its scale
from the file: two devices that agree to the step computed the same integers), a float output by
absolute and relative difference; for logits also the share of samples whose top-1 class agrees.
With ``per_layer`` both devices return every op's output (the agent's ``Intermediates``; for TFLite
with XNNPACK still applied) and the first tensor in graph order where they part is named.

>>> # c = compare_devices("m.tflite", "qemu://pi4", against="local"); c.outputs[0].differing  # doctest: +SKIP
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import open_device
from .base import Inputs, InputShapes, ModelFile, RunResult, open_model
from .measure import feed_of, real_inputs, run_with_intermediates
from .stats import Protocol
from .store import ResultStore

__all__ = ["Agreement", "DeviceComparison", "compare_devices", "agreement", "FLOAT_PART_REL"]

# Two float tensors "part" when they differ by more than this share of the tensor's largest
# magnitude: far above the last-bit differences of fused multiply-adds and summation order that
# make ARM and x86 fp32 differ (around 1e-6 relative), far below any real disagreement.
FLOAT_PART_REL = 1e-4


@dataclass(frozen=True)
class Agreement:
    """One tensor on device A against the same tensor on device B.

    ``unit`` is ``int8 steps`` (the values are the dequantized integers, ``scale`` apart) or ``abs``;
    ``differing`` counts values that are not equal (int8: at least one step apart; float: more than
    ``FLOAT_PART_REL`` of the largest magnitude apart); ``max_diff`` is in ``unit``; ``max_rel`` the
    largest difference relative to the largest magnitude; ``top1_agreement`` for (samples, classes)
    logits only."""

    name: str
    op: str | None
    unit: str
    values: int
    differing: int
    max_diff: float
    max_rel: float
    top1_agreement: float | None

    @property
    def share(self) -> float:
        return self.differing / self.values if self.values else 0.0

    @property
    def parts(self) -> bool:
        return self.differing > 0

    def format(self) -> str:
        diff = f"{self.max_diff:.0f} step(s)" if self.unit == "int8 steps" else f"{self.max_diff:.3g} abs"
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {100 * self.top1_agreement:.1f} %"
        beyond = "" if self.unit == "int8 steps" else f" by more than {FLOAT_PART_REL:g} of the largest magnitude"
        return (f"{self.differing} of {self.values} values differ{beyond} ({100 * self.share:.2f} %), largest {diff} "
                f"({self.max_rel:.2e} of the largest magnitude){top1}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "unit": self.unit, "values": self.values,
                "differing": self.differing, "share": self.share, "max_diff": self.max_diff, "max_rel": self.max_rel,
                "top1_agreement": self.top1_agreement}


def agreement(name: str, a: np.ndarray, b: np.ndarray, *, scale: float | None, op: str | None = None,
              logits: bool = False) -> Agreement:
    """``a`` (device A) against ``b`` (device B), same shape (samples first). ``scale`` set: the
    values are int8 steps of that scale (dequantized, or raw integers with scale 1)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"{name}: the devices returned shapes {a64.shape} and {b64.shape}")
    peak = float(np.max(np.abs(a64))) if a64.size else 0.0
    nan_a, nan_b = ~np.isfinite(a64), ~np.isfinite(b64)
    diff = np.abs(np.where(nan_a | nan_b, 0.0, a64 - b64))
    if scale is not None:
        steps = np.rint(diff / scale)
        differing = int(np.count_nonzero(steps) + np.count_nonzero(nan_a != nan_b))
        max_diff, unit = float(steps.max()) if steps.size else 0.0, "int8 steps"
    else:
        differing = int(np.count_nonzero(diff > FLOAT_PART_REL * max(peak, 1e-30)) + np.count_nonzero(nan_a != nan_b))
        max_diff, unit = float(diff.max()) if diff.size else 0.0, "abs"
    top1 = None
    if logits and a64.ndim >= 2:
        flat_a, flat_b = a64.reshape(-1, a64.shape[-1]), b64.reshape(-1, b64.shape[-1])
        top1 = float(np.mean(np.argmax(flat_a, axis=1) == np.argmax(flat_b, axis=1)))
    return Agreement(name, op, unit, int(a64.size), differing, max_diff,
                     float(diff.max() / peak) if peak > 0 and diff.size else 0.0, top1)


@dataclass(frozen=True)
class DeviceComparison:
    """``file`` run on ``device`` (A) and ``against`` (B) on the same inputs."""

    file: str
    a: RunResult
    b: RunResult
    inputs_source: str
    outputs: tuple[Agreement, ...]
    layers: tuple[Agreement, ...] | None  # with per_layer: every op output in graph order
    kernels: str | None  # which kernels computed the per-layer tensors
    stored_ids: tuple[int, ...]

    @property
    def first_parting(self) -> Agreement | None:
        return next((lay for lay in self.layers or () if lay.parts), None)

    @property
    def agree(self) -> bool:
        return not any(o.parts for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_parting
        return {"file": self.file, "device": self.a.device, "against": self.b.device, "inputs": self.inputs_source,
                "agree": self.agree, "outputs": [o.to_dict() for o in self.outputs],
                "device_result": self.a.to_dict(), "against_result": self.b.to_dict(),
                "float_part_rel": FLOAT_PART_REL,
                "per_layer": None if self.layers is None else {
                    "kernels": self.kernels, "tensors": len(self.layers),
                    "first_parting": None if first is None else first.to_dict(),
                    "layers": [lay.to_dict() for lay in self.layers]},
                "stored_ids": list(self.stored_ids)}


def _output_scales(model: ModelFile, result: RunResult) -> list[float | None]:
    """Per output: its int8 scale (the values come back dequantized), 1.0 for the raw integers of
    a third-party file, None for a float output."""
    scales: list[float | None] = []
    for i, _ in enumerate(result.output_names):
        y = result.outputs[f"output_{i}"]
        if model.manifest is None:
            scales.append(1.0 if y.dtype.kind in "iu" else None)
            continue
        spec = model.manifest.outputs[i] if i < len(model.manifest.outputs) else None
        scales.append(spec.scale if spec is not None and spec.dtype in ("int8", "uint8") else None)
    return scales


def _run(dev, *, model: ModelFile, inputs: Inputs, protocol: Protocol, per_layer: bool,
         input_shapes: InputShapes):
    if not per_layer:
        return dev.run(model, inputs, protocol=protocol, input_shapes=input_shapes), None, {}, None
    return run_with_intermediates(dev, model, inputs, protocol, input_shapes=input_shapes)


def _layers(index_a: Sequence[Mapping[str, Any]], tensors_a: Mapping[str, np.ndarray],
            index_b: Sequence[Mapping[str, Any]], tensors_b: Mapping[str, np.ndarray]) -> tuple[Agreement, ...]:
    by_tensor = {e["tensor"]: e for e in index_b}
    rows = []
    for e in index_a:
        other = by_tensor.get(e["tensor"])
        if other is None:
            continue
        a, b = tensors_a[e["key"]], tensors_b[other["key"]]
        if a.shape != b.shape:
            continue
        rows.append(agreement(e["tensor"], a, b, scale=e.get("scale"), op=e.get("op")))
    return tuple(rows)


def compare_devices(path: str | Path, device: str, *, against: str = "local", protocol: Protocol = Protocol(),
                    data: str | None = None, samples: int | None = None, per_layer: bool = False, store: bool = True,
                    profile: str | Path | None = None, input_shapes: InputShapes = (), inputs: str | Path | None = None,
                    **device_options: Any) -> DeviceComparison:
    """Run ``path`` on ``device`` and on ``against`` on the same inputs (real images for an edgekit
    file, the arrays of ``inputs``, or the first device's seeded inputs for a third-party one) and
    compare every output, and with ``per_layer`` every op output. ``input_shapes`` sets the file's
    dynamic dimensions on both. ``device_options`` and ``profile`` apply to ``device``.
    Both results go to the store only when both runs succeeded."""
    if device == against:
        raise ValueError(f"--against {against!r} is the device itself; name another device to compare with")
    model = open_model(path)
    feed = feed_of(model, data=data, samples=samples, weights=None, compare=False, per_layer=False, inputs=inputs)
    run = functools.partial(_run, model=model, protocol=protocol, per_layer=per_layer, input_shapes=input_shapes)
    dev_a = open_device(device, profile=profile, **device_options)
    try:
        dev_b = open_device(against)
        try:
            source = feed.source
            if feed.data is not None:
                images, nchw = real_inputs(model, data=feed.data, samples=feed.samples)
                source = f"{feed.data} test images 0..{len(nchw) - 1}"
                res_a, idx_a, ten_a, kernels = run(dev_a, inputs=[images])
                res_b, idx_b, ten_b, _ = run(dev_b, inputs=[images])
            elif feed.arrays is not None:
                res_a, idx_a, ten_a, kernels = run(dev_a, inputs=feed.arrays)
                res_b, idx_b, ten_b, _ = run(dev_b, inputs=feed.arrays)
            else:
                source += ", generated on the first device"
                res_a, idx_a, ten_a, kernels = run(dev_a, inputs=None)
                same = [res_a.inputs[k] for k in sorted(res_a.inputs, key=lambda k: int(k.split("_")[-1]))]
                res_b, idx_b, ten_b, _ = run(dev_b, inputs=same)
        finally:
            dev_b.release()
    finally:
        dev_a.release()
    if res_a.output_names != res_b.output_names:
        raise ValueError(f"the devices name the outputs differently: {res_a.output_names} and {res_b.output_names}")
    outputs = []
    for i, (name, scale) in enumerate(zip(res_a.output_names, _output_scales(model, res_a))):
        a, b = res_a.outputs[f"output_{i}"], res_b.outputs[f"output_{i}"]
        logits = a.ndim == 3 and a.shape[-1] > 1  # (samples, batch, classes)
        outputs.append(agreement(name, a, b, scale=scale, logits=logits))
    layers = _layers(idx_a, ten_a, idx_b, ten_b) if per_layer else None
    stored: tuple[int, ...] = ()
    if store:
        db = ResultStore()
        stored = tuple(db.record(r, artifact_path=str(model.path)) for r in (res_a, res_b))
    return DeviceComparison(str(model.path), res_a, res_b, source, tuple(outputs), layers, kernels, stored)
