"""Top-1 of an exported artifact next to its PyTorch source, on a labelled dataset.

>>> # report = validate("out/ghostnet_0_5.int8.tflite", data="fashion-mnist")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration.data import load_dataset, preprocess
from .devices.agent import Runner
from .exporters.artifact import Artifact, load_artifact, sha256_file
from .parity import ParityReport, compare

__all__ = ["ValidationReport", "validate", "reference_model"]


@dataclass(frozen=True)
class ValidationReport:
    artifact: str
    format: str
    precision: str
    dataset: str
    n: int
    top1: float
    torch_top1: float | None
    parity: ParityReport | None  # artifact logits vs PyTorch logits on the same images
    seconds: float
    top5: float | None = None  # with more than 5 classes
    torch_top5: float | None = None

    @property
    def drop(self) -> float | None:
        return None if self.torch_top1 is None else self.torch_top1 - self.top1

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "format": self.format, "precision": self.precision,
                "dataset": self.dataset, "n": self.n, "top1": self.top1, "torch_top1": self.torch_top1,
                "drop": self.drop, "top5": self.top5, "torch_top5": self.torch_top5,
                "parity": None if self.parity is None else self.parity.to_dict(), "seconds": self.seconds}


def reference_model(art: Artifact, weights: str | Path | None = None) -> torch.nn.Module | None:
    """The PyTorch network an artifact came from, with its weights; None when the manifest names
    no weights file and none is given (an export of untrained weights has no accuracy to compare)."""
    from .train import load_weights

    source = art.manifest.source
    if source is not None and (weights is None or source["kind"] == "timm"):  # outside the zoo: build it again
        from .models.external import rebuild
        return rebuild(source, weights)
    path = weights or art.manifest.weights_file
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the PyTorch weights {path} named by {art.manifest_path.name} are gone; pass --weights FILE")
    if art.manifest.weights_sha256 and sha256_file(path) != art.manifest.weights_sha256:
        raise ValueError(f"{path} is not the weights {art.path.name} was exported from (sha256 differs); "
                         f"pass the right --weights FILE or re-export")
    model, _, _ = load_weights(path)
    return model


def validate(artifact: str | Path, *, data: str = "fashion-mnist", limit: int | None = None,
             weights: str | Path | None = None, threads: int = 1) -> ValidationReport:
    art = load_artifact(artifact)
    m = art.manifest
    if m.preprocessing is None:
        raise ValueError(f"{art.manifest_path.name} records no preprocessing; cannot feed it images")
    ds = load_dataset(data, split="test", limit=limit, fit=m.preprocessing)
    if ds.labels is None:
        raise ValueError(f"{data!r} has no labels; validation needs a labelled dataset")
    x = preprocess(ds.images, m.preprocessing, layout="NCHW")  # (N, C, H, W) float32
    layout = m.inputs[0].layout
    first = m.outputs[0]
    if len(first.shape) != 2:
        raise ValueError(f"validate measures top-1 on the first output, which must be (N, classes) logits; "
                         f"{art.path.name}'s first output {first.name} has shape {'x'.join(map(str, first.shape))}")
    start = time.perf_counter()
    with _native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on fd 2
        runner = Runner(str(art.path), m.to_dict(), threads=threads)
    batch = m.inputs[0].shape[0]
    logits = _run_all(runner, x, batch, nhwc=(layout == "NHWC"))
    top1 = float((logits.argmax(1) == ds.labels).mean())
    ref = reference_model(art, weights)
    torch_top1 = parity = torch_top5 = None
    if ref is not None:
        with torch.no_grad():
            ref_logits = np.concatenate([_first(ref(torch.from_numpy(x[i:i + 256]))).numpy()
                                         for i in range(0, len(x), 256)])
        torch_top1 = float((ref_logits.argmax(1) == ds.labels).mean())
        torch_top5 = _top5(ref_logits, ds.labels)
        parity = compare(ref_logits, logits)
    return ValidationReport(str(art.path), m.format, m.precision, ds.name, len(x), top1, torch_top1, parity,
                            time.perf_counter() - start, _top5(logits, ds.labels), torch_top5)


def _first(out):
    """The logits of a network that returns several outputs: its first (the file's first, too)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _top5(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of images whose label is among the 5 largest logits; None with 5 classes or fewer."""
    if logits.ndim != 2 or logits.shape[1] <= 5:
        return None
    best = np.argpartition(-logits, 5, axis=1)[:, :5]
    return float((best == labels[:, None]).any(axis=1).mean())


@contextlib.contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _run_all(runner: Runner, x: np.ndarray, batch: int, *, nhwc: bool) -> np.ndarray:
    outs = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        if len(xb) < batch:  # a static-batch file: pad the last batch, keep only the real rows
            xb = np.concatenate([xb, np.zeros((batch - len(xb), *xb.shape[1:]), xb.dtype)])
        if nhwc:
            xb = xb.transpose(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        outs.append(runner(np.ascontiguousarray(xb))[0][: len(x) - i])
    return np.concatenate(outs)
