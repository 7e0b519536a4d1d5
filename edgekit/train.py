"""Train a zoo model on a labelled dataset (Fashion-MNIST by default) and measure its top-1.

The trained weights are saved with what is needed to rebuild the network (model name or ArchSpec,
classes, input channels, resolution, width), so ``edgekit export --weights`` and
``edgekit validate`` rebuild exactly the network that was trained.

>>> # result = train("ghostnet_0_5", data="fashion-mnist", epochs=1, out="w.pt")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .calibration.data import Dataset, load_dataset, preprocess, preprocessing_for
from .exporters.artifact import Preprocessing, atomic_write_bytes, sha256_bytes
from .models import ArchSpec, create_model, from_arch, get_cfg
from .models.arch import ArchNet
from .models.pretrained import TIMM, is_timm

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "build_model", "load_weights",
           "save_weights", "default_resolution", "recalibrate_bn"]

WEIGHTS_FORMAT = "edgekit-weights-1"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    limit: int | None = None  # train on the first N training images only
    test_limit: int | None = None  # measure top-1 on the first N test images only (default: all)
    seed: int = 0
    hflip: bool = True  # Fashion-MNIST garments are left/right symmetric enough for flips

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs} must be >= 1")
        if self.batch_size < 2:
            raise ValueError(f"batch_size {self.batch_size} must be >= 2 (BatchNorm needs a batch)")
        if not self.lr > 0:
            raise ValueError(f"lr {self.lr} must be > 0")
        if self.limit is not None and self.limit < self.batch_size:
            raise ValueError(f"limit {self.limit} must be >= batch_size {self.batch_size}")


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    top1: float  # on the test split
    epochs: int
    seconds: float
    history: tuple[dict[str, float], ...] = field(default=())


def default_resolution(name: str, *, wanted: int = 32) -> int:
    """The smallest side >= ``wanted`` that the model takes (Fashion-MNIST's 28 px are resized to it)."""
    cfg = get_cfg(name)
    side = max(wanted, cfg.min_resolution)
    return -(-side // cfg.resolution_divisor) * cfg.resolution_divisor


def build_model(name: str | None = None, *, arch: ArchSpec | None = None, num_classes: int, in_chans: int,
                resolution: int | tuple[int, int], width: float | None = None) -> nn.Module:
    """A zoo model by name, or a network from an ArchSpec (searched networks)."""
    if (name is None) == (arch is None):
        raise ValueError("give exactly one of a model name or an ArchSpec")
    if arch is not None:
        model = from_arch(arch, num_classes=num_classes, in_chans=in_chans)
        hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        model.default_cfg = {"name": arch.name, "family": "archspec", "input_size": [in_chans, *hw],
                             "num_classes": num_classes, "mean": [0.449] * in_chans, "std": [0.226] * in_chans,
                             "task": "classification"}
        return model
    return create_model(name, num_classes=num_classes, in_chans=in_chans, resolution=resolution, width=width)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def evaluate(model: nn.Module, inputs: np.ndarray, labels: np.ndarray, *, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` on preprocessed NCHW ``inputs``."""
    model.eval()
    correct = 0
    for idx in _batches(len(inputs), batch_size, None):
        logits = model(torch.from_numpy(inputs[idx]))
        correct += int((logits.argmax(1).numpy() == labels[idx]).sum())
    return correct / len(inputs)


def _prepared(data: str, pre: Preprocessing, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, Dataset]:
    ds = load_dataset(data, split=split, limit=limit)
    if ds.labels is None:
        raise ValueError(f"{data!r} has no labels; training and validation need a labelled dataset "
                         f"(fashion-mnist, IDX files with labels, or class folders)")
    return preprocess(ds.images, pre), ds.labels.astype(np.int64), ds


def train(name: str | None = None, *, arch: ArchSpec | None = None, data: str = "fashion-mnist",
          out: str | Path, config: TrainConfig = TrainConfig(), in_chans: int = 1,
          resolution: int | None = None, width: float | None = None, init: str | Path | None = None,
          progress: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train ``name`` (or ``arch``) on ``data`` and save the weights to ``out``: from scratch, or
    for ``timm:NAME`` fine-tuned from the checkpoint ``init`` (a new classifier for the dataset's
    classes; three input channels, grey images replicated; timm's preprocessing for that name)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"output directory {out.parent} does not exist")
    torch.manual_seed(config.seed)
    probe = load_dataset(data, split="test", limit=1)
    num_classes = len(probe.class_names)
    started_from = None
    if name is not None and is_timm(name):
        model, started_from = _from_checkpoint(name, init, num_classes, resolution)
        # rebuilt from the exact ArchSpec (its padding, eps), or as the zoo network timm's is
        name, arch = (None, model.spec) if isinstance(model, ArchNet) else (TIMM[name.removeprefix("timm:")].zoo, None)
        in_chans = 3
    elif init is not None:
        raise ValueError(f"--init starts from a timm checkpoint (timm:NAME --init FILE); {name or arch.name} "
                         f"trains from scratch")
    else:
        side = resolution or (default_resolution(name) if name else 32)
        model = build_model(name, arch=arch, num_classes=num_classes, in_chans=in_chans, resolution=side,
                            width=width)
    pre = preprocessing_for(model.default_cfg)
    x_train, y_train, _ = _prepared(data, pre, "train", config.limit)
    x_test, y_test, _ = _prepared(data, pre, "test", config.test_limit)
    if y_train.max() >= num_classes:
        raise ValueError(f"labels go up to {int(y_train.max())} but the dataset names {num_classes} classes")

    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                                                pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    rng = np.random.default_rng(config.seed)
    history, start = [], time.perf_counter()
    with _flushed_denormals():
        for epoch in range(config.epochs):
            model.train()
            total, seen = 0.0, 0
            for idx in _batches(len(x_train), config.batch_size, rng):
                if len(idx) < 2:
                    continue  # BatchNorm cannot train on a batch of one
                xb = torch.from_numpy(x_train[idx])
                if config.hflip:
                    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
                    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                loss = loss_fn(model(xb), torch.from_numpy(y_train[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            recalibrate_bn(model, x_train[rng.permutation(len(x_train))[:2048]])
            record = {"epoch": epoch + 1, "loss": total / seen, "top1": evaluate(model, x_test, y_test),
                      "seconds": time.perf_counter() - start}
            history.append(record)
            if progress is not None:
                progress(record)
    meta = {"model": name, "arch": None if arch is None else arch.to_dict(), "num_classes": num_classes,
            "in_chans": in_chans, "resolution": list(pre.resolution), "width": width,
            "dataset": data, "top1": history[-1]["top1"], "config": asdict(config),
            "class_names": list(probe.class_names)}
    if started_from is not None:  # the checkpoint's preprocessing, which the weights were tuned with
        meta.update(init=started_from, preprocessing={k: model.default_cfg[k] for k in PREPROCESSING_KEYS})
    save_weights(out, model, meta)
    return TrainResult(out, history[-1]["top1"], config.epochs, time.perf_counter() - start, tuple(history))


@contextlib.contextmanager
def _flushed_denormals() -> Iterator[None]:
    """Denormal floats flushed to zero while training: a network started from a checkpoint can carry
    activations small enough to be denormal, which the CPU computes many times slower (a 1-epoch
    fine-tune of EfficientNet-B0 here took 65 s with them, 11 s without)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


PREPROCESSING_KEYS = ("mean", "std", "crop_pct", "interpolation")


def _from_checkpoint(spec: str, init: str | Path | None, num_classes: int,
                     resolution: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """A timm checkpoint's network with a new classifier of ``num_classes``, and what it started from."""
    from .models.pretrained import load_timm
    if init is None:
        raise ValueError(f"{spec} trains from its checkpoint: pass --init FILE (.safetensors, .pth or .pth.tar)")
    model, sha = load_timm(spec, init, resolution=resolution)
    old = model.head.classifier
    model.head.classifier = (nn.Linear(old.in_features, num_classes) if isinstance(old, nn.Linear)
                             else nn.Conv2d(old.in_channels, num_classes, 1, bias=True))
    model.default_cfg["num_classes"] = num_classes
    return model, {"spec": spec, "checkpoint": str(Path(init).resolve()), "checkpoint_sha256": sha}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, inputs: np.ndarray, *, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running statistics as an exact average over ``inputs``.

    Running averages taken during a short training run lag the weights; eval-mode accuracy (and
    the activation ranges int8 calibration sees) then reflect stale statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    for idx in _batches(len(inputs), batch_size, None):
        if len(idx) > 1:
            model(torch.from_numpy(inputs[idx]))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


def save_weights(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": WEIGHTS_FORMAT, "meta": meta, "state_dict": model.state_dict()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_weights(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any], str]:
    """Load a weights file into ``model`` (or the network its metadata names).

    Returns (model, meta, sha256 of the file). A tensor missing, extra or of another shape is
    an error naming the first such tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    raw = path.read_bytes()
    try:
        blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"weights file {path} cannot be read ({type(e).__name__}: {e}); is it truncated?") from None
    if isinstance(blob, dict) and blob.get("format") == WEIGHTS_FORMAT:
        meta, state = blob["meta"], blob["state_dict"]
    elif isinstance(blob, dict) and all(isinstance(v, torch.Tensor) for v in blob.values()):
        meta, state = {}, blob  # a bare state_dict
    else:
        raise ValueError(f"weights file {path} is neither an edgekit weights file nor a state_dict")
    if model is None:
        if not meta:
            raise ValueError(f"{path} is a bare state_dict: name the model it belongs to")
        arch = ArchSpec.from_dict(meta["arch"]) if meta.get("arch") else None
        model = build_model(meta.get("model"), arch=arch, num_classes=meta["num_classes"],
                            in_chans=meta["in_chans"], resolution=tuple(meta["resolution"]), width=meta.get("width"))
        model.default_cfg.update(meta.get("preprocessing") or {})  # a fine-tuned checkpoint's own
    _check_state(model, state, path)
    model.load_state_dict(state)
    return model.eval(), meta, sha256_bytes(raw)


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ValueError(f"weights {path} do not match the model: tensor {key!r} {tuple(tensor.shape)} is missing")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(f"weights {path} do not match the model: tensor {key!r} has shape "
                             f"{tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the model")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"weights {path} do not match the model: unexpected tensor {extra[0]!r} "
                         f"(and {len(extra) - 1} more)")
