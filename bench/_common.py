"""Shared by the benchmarks in bench/: the family table, cached training, captured tool output and
the machine fingerprint that every result file carries."""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import io
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # gitignored: weights and exported files
RESULTS = ROOT / "bench" / "results"

# No converter may reach for a model hub; set before litert-torch (and its hub imports) load.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "3"}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

# family -> (variant, activation note). One variant per family; "hard" families use hard-swish or
# squeeze-excitation gates, whose int8 drop target is 1.0 point instead of 0.5.
FAMILIES: dict[str, dict[str, Any]] = {
    "ESPNet v1": {"variant": "espnet_v1_c", "hard": False, "acts": "PReLU"},
    "ESPNet v2": {"variant": "espnetv2_1_0", "hard": False, "acts": "PReLU"},
    "FBNet v1": {"variant": "fbnet_a", "hard": False, "acts": "ReLU"},
    "FBNet v2": {"variant": "fbnetv2_f1", "hard": True, "acts": "hard-swish + SE"},
    "FBNet v3": {"variant": "fbnetv3_a", "hard": True, "acts": "hard-swish + SE"},
    "EfficientNet v1": {"variant": "efficientnet_b0", "hard": True, "acts": "SiLU + SE"},
    "EfficientNet v2": {"variant": "efficientnetv2_s", "hard": True, "acts": "SiLU + SE"},
    "GhostNet v1": {"variant": "ghostnet_1_0", "hard": True, "acts": "ReLU + SE (hard-sigmoid)"},
    "GhostNet v2": {"variant": "ghostnetv2_1_0", "hard": True, "acts": "ReLU + SE + DFC attention (sigmoid)"},
}
QUICK_FAMILIES = ("GhostNet v1", "FBNet v1")


def family_and_variant(key: str) -> tuple[str, str]:
    """A family name -> (family, its bench variant); a registered variant of one of the nine
    families (e.g. ``espnetv2_2_0``) -> (its family, that variant); anything else is refused with
    the valid names."""
    for fam, d in FAMILIES.items():
        if key.lower() in (fam.lower(), d["variant"]):
            return fam, d["variant"]
    from edgekit.models.registry import get_cfg, list_models
    if key in list_models():
        family = get_cfg(key).family
        for fam, d in FAMILIES.items():
            if get_cfg(d["variant"]).family == family:
                return fam, key
    raise ValueError(f"unknown family {key!r}; choose from {list(FAMILIES)}, their variants "
                     f"{[d['variant'] for d in FAMILIES.values()]} or another registered variant of theirs")


# ---- training (cached) ------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    resolution: int = 32
    limit: int = 6000  # first N training images
    epochs: int = 1
    batch_size: int = 64
    seed: int = 0

    def key(self, variant: str, side: int) -> str:
        return f"{variant}-r{side}-n{self.limit}-e{self.epochs}-b{self.batch_size}-s{self.seed}"


class SpatialMean(nn.Module):
    """ESPNet-C gives per-location class logits at H/8; a classifier takes their spatial mean."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.default_cfg = dict(encoder.default_cfg, task="classification")
        self.default_cfg["notes"] = "ESPNet-C encoder + mean of its H/8 logit map over space"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean((2, 3))  # (B, C, H/8, W/8) -> (B, C)


def side_for(variant: str, wanted: int) -> int:
    from edgekit.train import default_resolution
    return default_resolution(variant, wanted=wanted)


def build(variant: str, side: int) -> nn.Module:
    from edgekit.models import create_model, get_cfg
    model = create_model(variant, num_classes=10, in_chans=1, resolution=side)
    if get_cfg(variant).task != "classification":
        model = SpatialMean(model)
    return model


def trained_model(variant: str, ts: TrainSettings, log=print) -> tuple[nn.Module, Path, dict[str, Any]]:
    """(model in eval mode, weights file, training record); trains once per (variant, settings) and
    reuses the cached weights afterwards."""
    from edgekit.train import TrainConfig, load_weights, train
    side = side_for(variant, ts.resolution)
    weights = OUT / "weights" / f"{ts.key(variant, side)}.pt"
    record_file = weights.with_suffix(".json")
    weights.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=ts.epochs, batch_size=ts.batch_size, limit=ts.limit, test_limit=1000, seed=ts.seed)
    if not weights.is_file():
        log(f"  training {variant} at {side}x{side} on {ts.limit} images ({ts.epochs} epoch) ...")
        t0 = time.perf_counter()
        if isinstance(build(variant, side), SpatialMean):
            top1 = _train_wrapped(variant, side, config, weights)
        else:
            top1 = train(variant, data="fashion-mnist", out=weights, config=config, in_chans=1, resolution=side).top1
        record = {"variant": variant, "resolution": side, "settings": asdict(ts), "config": asdict(config),
                  "seconds": round(time.perf_counter() - t0, 1), "top1_first_1000_test": top1,
                  "torch_threads": torch.get_num_threads(),
                  "trainer": "edgekit.train.train" if not isinstance(build(variant, side), SpatialMean)
                  else "bench._common._train_wrapped (edgekit.train's recipe; spatial-mean head)"}
        record_file.write_text(json.dumps(record, indent=2))
        log(f"  trained in {record['seconds']:.0f} s (top-1 on 1000 test images {100 * top1:.1f} %)")
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    record["cached_weights"] = str(weights.relative_to(ROOT))
    if isinstance(build(variant, side), SpatialMean):
        model = build(variant, side)
        load_weights(weights, model)
        return model.eval(), weights, record
    model, _, _ = load_weights(weights)
    return model.eval(), weights, record


def _train_wrapped(variant: str, side: int, config, out: Path) -> float:
    """edgekit.train's recipe (AdamW, one-cycle, label smoothing, flips, BN re-estimation) for a
    network edgekit.train cannot build by name: the segmentation encoder with a spatial-mean head."""
    from edgekit.calibration.data import load_dataset, preprocess, preprocessing_for
    from edgekit.train import evaluate, recalibrate_bn, save_weights
    torch.manual_seed(config.seed)
    model = build(variant, side)
    pre = preprocessing_for(model.default_cfg)
    tr = load_dataset("fashion-mnist", split="train", limit=config.limit)
    te = load_dataset("fashion-mnist", split="test", limit=config.test_limit)
    x, y = preprocess(tr.images, pre), tr.labels.astype(np.int64)
    steps = math.ceil(len(x) / config.batch_size) * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    rng = np.random.default_rng(config.seed)
    for _ in range(config.epochs):
        model.train()
        order = rng.permutation(len(x))
        for i in range(0, len(x), config.batch_size):
            idx = order[i:i + config.batch_size]
            if len(idx) < 2:
                continue
            xb = torch.from_numpy(x[idx])
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = loss_fn(model(xb), torch.from_numpy(y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        recalibrate_bn(model, x[rng.permutation(len(x))[:2048]])
    top1 = evaluate(model, preprocess(te.images, pre), te.labels.astype(np.int64))
    save_weights(out, model, {"model": None, "bench_variant": variant, "head": "spatial-mean", "num_classes": 10,
                              "in_chans": 1, "resolution": [side, side], "dataset": "fashion-mnist", "top1": top1})
    return top1


# ---- captured tool output -----------------------------------------------------------------------

@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """fds 1 and 2 (Python prints, absl, C++ logging alike) into a temporary file; its text is put
    in the yielded list when the block ends, so a failure can quote what the tool said."""
    box: list[str] = []
    for s in (sys.stdout, sys.stderr):
        s.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()) as py_out:
                yield box
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            box.append(py_out.getvalue() + log.read().decode("utf-8", "replace"))


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:400]


# ---- fingerprint ------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def alternating_times(calls: Sequence[Callable[[], Any]], *, runs: int, warmup: int, pin: bool) -> list[np.ndarray]:
    """Seconds of each call over ``runs`` rounds in which every call runs once, the order reversed
    every other round, after ``warmup`` runs of each, so load from other processes falls on all
    alike; ``pin`` keeps this process on one core meanwhile (where the OS allows it)."""
    pin = pin and hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pin else None
    if pin:
        os.sched_setaffinity(0, {max(before)})
    times: list[list[int]] = [[] for _ in calls]
    order = list(range(len(calls)))
    try:
        for call in calls:
            for _ in range(warmup):
                call()
        for k in range(runs):
            for i in (order if k % 2 == 0 else order[::-1]):
                t0 = time.perf_counter_ns()
                calls[i]()
                times[i].append(time.perf_counter_ns() - t0)
    finally:
        if pin:
            os.sched_setaffinity(0, before)
    return [np.asarray(t, dtype=np.float64) / 1e9 for t in times]


def fingerprint(argv: list[str]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *argv]),
        "cwd": str(ROOT), "cpu": cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "arch": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {d: _version(d) for d in ("torch", "onnx", "onnxscript", "onnxruntime", "ai-edge-litert",
                                              "litert-torch", "ai-edge-quantizer", "torchao", "numpy")},
    }


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
