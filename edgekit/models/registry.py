"""Model registry: ``@register_model`` entry points, ``create_model`` and ``list_models``.

Each entry point is a small function ``fn(*, num_classes, in_chans, resolution, width, **kw)``
returning an ``nn.Module`` that carries ``default_cfg``. Overrides are validated here, before
anything is built, against limits the family declares in its ``default_cfg``.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .._checks import is_count

__all__ = ["ModelCfg", "register_model", "create_model", "list_models", "get_cfg", "resolve_resolution"]


@dataclass(frozen=True)
class ModelCfg:
    """What a registered variant is: its defaults, the paper it comes from and the limits of its overrides."""

    name: str
    family: str
    paper: str
    resolution: tuple[int, int]  # (H, W) the published figures are measured at
    num_classes: int = 1000
    in_chans: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"
    task: str = "classification"
    width: float | None = None  # the width multiplier; None for a family without one
    min_resolution: int = 32  # smallest side the network takes
    resolution_divisor: int = 1  # each side must be a multiple of this
    notes: str = ""

    def __post_init__(self):
        if self.task not in ("classification", "segmentation"):
            raise ValueError(f"task {self.task!r} must be 'classification' or 'segmentation'")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "family": self.family, "paper": self.paper, "task": self.task,
            "input_size": [self.in_chans, *self.resolution], "num_classes": self.num_classes,
            "mean": list(self.mean), "std": list(self.std), "layout": self.layout, "width": self.width,
            "min_resolution": self.min_resolution, "resolution_divisor": self.resolution_divisor,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    cfg: ModelCfg = field(compare=False)


_REGISTRY: dict[str, _Entry] = {}


def register_model(cfg: ModelCfg) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` under ``cfg.name``; refuses a name that is already taken."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if cfg.name in _REGISTRY:
            raise ValueError(f"model {cfg.name!r} is registered twice")
        _REGISTRY[cfg.name] = _Entry(fn, cfg)
        return fn

    return deco


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell-style wildcard (``'ghostnet*'``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_cfg(name: str) -> ModelCfg:
    return _lookup(name).cfg


def _lookup(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (`edgekit models` lists all "
                         f"{len(_REGISTRY)} registered names)") from None


def resolve_resolution(cfg: ModelCfg, resolution: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
    """The (H, W) a model is built for, checked against what the family can take."""
    if resolution is None:
        return cfg.resolution
    if isinstance(resolution, bool):
        raise ValueError(f"resolution {resolution!r} must be an int or (height, width)")
    hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hw):
        raise ValueError(f"resolution {resolution!r} must be an int or (height, width) of ints")
    for side in hw:
        if side < cfg.min_resolution:
            raise ValueError(f"resolution {resolution} is too small for {cfg.name}: each side must be "
                             f">= {cfg.min_resolution}")
        if side % cfg.resolution_divisor:
            raise ValueError(f"resolution {resolution} does not fit {cfg.name}: each side must be a "
                             f"multiple of {cfg.resolution_divisor} (e.g. "
                             f"{side // cfg.resolution_divisor * cfg.resolution_divisor or cfg.resolution_divisor})")
    return hw  # type: ignore[return-value]


def _check_overrides(cfg: ModelCfg, num_classes: int, in_chans: int, width: float | None) -> None:
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if not is_count(value):
            raise ValueError(f"{label}={value!r} is invalid for {cfg.name}: it must be an int >= 1")
    if width is not None:
        if cfg.width is None:
            raise ValueError(f"{cfg.name} has no width multiplier; leave width unset")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f"width={width!r} is invalid for {cfg.name}: it must be a number > 0")


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                 resolution: int | tuple[int, int] | None = None, width: float | None = None,
                 **kw: Any) -> nn.Module:
    """Build a registered model.

    >>> m = create_model("ghostnet_1_0", num_classes=10, in_chans=1, resolution=64)
    >>> m.default_cfg["input_size"]
    [1, 64, 64]
    """
    entry = _lookup(name)
    cfg = entry.cfg
    num_classes = cfg.num_classes if num_classes is None else num_classes
    in_chans = cfg.in_chans if in_chans is None else in_chans
    _check_overrides(cfg, num_classes, in_chans, width)
    hw = resolve_resolution(cfg, resolution)
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, resolution=hw,
                     width=cfg.width if width is None else float(width), **kw)
    default_cfg = cfg.to_dict()
    default_cfg.update(input_size=[in_chans, *hw], num_classes=num_classes,
                       width=cfg.width if width is None else float(width))
    if in_chans != len(cfg.mean):  # a grey-scale or multi-spectral variant: one statistic per channel
        default_cfg.update(mean=[sum(cfg.mean) / len(cfg.mean)] * in_chans,
                           std=[sum(cfg.std) / len(cfg.std)] * in_chans)
    model.default_cfg = default_cfg
    return model
