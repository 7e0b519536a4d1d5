"""``measure``: run an artifact on a device with real inputs, compare with its PyTorch reference,
store the complete result. This is what ``edgekit run`` calls.

>>> # m = measure("out/ghostnet_0_5-tflite-int8.tflite", device="local", compare=True)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..parity import ParityReport, compare
from . import open_device
from .base import ModelFile, RunResult, open_model
from .stats import Protocol
from .store import ResultStore

__all__ = ["Measurement", "measure", "real_inputs"]


@dataclass(frozen=True)
class Measurement:
    result: RunResult
    inputs_source: str
    parity: dict[str, ParityReport] | None  # output name -> metrics against PyTorch
    parity_note: str | None  # why parity was not measured
    stored_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "inputs": self.inputs_source,
                "parity": None if self.parity is None else {k: v.to_dict() for k, v in self.parity.items()},
                "parity_note": self.parity_note, "stored_id": self.stored_id}


def real_inputs(model: ModelFile, *, data: str, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(device inputs ``(S, *input shape)`` in the manifest's layout, the same images ``(S*B, C, H, W)``
    for PyTorch), preprocessed exactly as the manifest says."""
    from ..calibration.data import load_dataset, preprocess

    m = model.manifest
    if len(m.inputs) != 1:
        raise ValueError(f"{model.path.name} has {len(m.inputs)} inputs; images can feed only a one-input model")
    if m.preprocessing is None:
        raise ValueError(f"{model.path.name}'s manifest records no preprocessing; cannot feed it images")
    spec = m.inputs[0]
    batch = spec.shape[0]
    ds = load_dataset(data, split="test", limit=samples * batch)
    if len(ds) < samples * batch:
        raise ValueError(f"{data!r} has {len(ds)} images; {samples} samples of batch {batch} need {samples * batch}")
    nchw = preprocess(ds.images, m.preprocessing, layout="NCHW")  # (S*B, C, H, W)
    x = nchw.transpose(0, 2, 3, 1) if spec.layout == "NHWC" else nchw
    x = x.reshape(samples, *spec.shape)
    return np.ascontiguousarray(x), nchw


def _reference(model: ModelFile, nchw: np.ndarray, weights: str | Path | None):
    import torch

    from ..exporters.artifact import load_artifact
    from ..validate import reference_model

    ref = reference_model(load_artifact(model.path), weights)
    if ref is None:
        return None
    torch.set_num_threads(1)
    with torch.no_grad():
        out = ref(torch.from_numpy(nchw))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in outs]


def _parity(model: ModelFile, result: RunResult, nchw: np.ndarray | None, weights) -> tuple[dict | None, str | None]:
    if model.manifest is None:
        return None, ("not measured: a third-party file has no manifest, so nothing says which PyTorch model "
                      "it came from or how to preprocess images for it")
    if not result.outputs:
        return None, "not measured: " + "; ".join(n for n in result.notes if n.startswith("outputs")) or "no outputs"
    refs = _reference(model, nchw, weights)
    if refs is None:
        return None, ("not measured: the manifest names no PyTorch weights (exported from untrained weights); "
                      "export with --weights or pass --weights FILE")
    if len(refs) != len(result.output_names):
        raise ValueError(f"PyTorch gives {len(refs)} outputs, the file {len(result.output_names)}")
    reports = {}
    for i, (name, ref) in enumerate(zip(result.output_names, refs)):
        got = result.outputs[f"output_{i}"]
        reports[name] = compare(ref, got.reshape(ref.shape))  # (S, B, ...) -> (S*B, ...)
    return reports, None


def measure(path: str | Path, *, device: str = "local", protocol: Protocol = Protocol(), compare: bool = False,
            data: str = "fashion-mnist", samples: int = 16, weights: str | Path | None = None, store: bool = True,
            profile: str | Path | None = None, **device_options: Any) -> Measurement:
    """Run ``path`` on ``device`` under ``protocol``; with ``compare`` also its PyTorch reference on the
    same real images. Appends to the results store only after everything succeeded."""
    if samples < 1:
        raise ValueError(f"samples {samples} must be >= 1")
    model = open_model(path)
    dev = open_device(device, profile=profile, **device_options)
    nchw = None
    if model.manifest is not None:
        inputs, nchw = real_inputs(model, data=data, samples=samples)
        source = f"{data} test images 0..{len(nchw) - 1}"
        result = dev.run(model, [inputs], protocol=protocol)
    else:
        source = "seeded random inputs (seed 0) in each input's dtype and shape"
        result = dev.run(model, None, protocol=protocol)
    parity, note = (None, "not asked (pass --compare)")
    if compare:
        parity, note = _parity(model, result, nchw, weights)
    stored = None
    if store:
        stored = ResultStore().record(result, artifact_path=str(model.path),
                                      parity=None if parity is None else {k: v.to_dict() for k, v in parity.items()})
    return Measurement(result, source, parity, note, stored)
