"""Parameters and multiply-accumulates (the papers' "FLOPs").

Counting rules (shared/reference model_specs §0): Conv2d = out_elems * (Cin/groups) * kh * kw;
ConvTranspose2d = in_elems * (Cout/groups) * kh * kw; Linear = out_elems * in_features. BN,
activations, pooling, element-wise ops and resampling are not counted. Parameters are
``sum(p.numel())`` over ``parameters()`` (BN running statistics are buffers, not counted).

The forward pass runs on PyTorch's meta device by default: shapes propagate, nothing is
computed, so profiling EfficientNet-B7 at 600x600 costs milliseconds.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

__all__ = ["Profile", "StageProfile", "count_params", "profile_model", "profile_name", "peak_activation_bytes",
           "available_memory", "check_fits_in_memory"]


@dataclass(frozen=True)
class StageProfile:
    name: str
    params: int
    macs: int
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    stages: tuple[StageProfile, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape),
                "stages": [{"name": s.name, "params": s.params, "macs": s.macs, "out_shape": list(s.out_shape)}
                           for s in self.stages]}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return inp.numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def _stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The units `edgekit info` reports: each stage of ``model.stages`` if there is one, and the
    other top-level children; a model can name its own with ``stage_names()``."""
    if hasattr(model, "stage_names"):
        named = dict(model.named_modules())
        return [(n, named[n]) for n in model.stage_names()]
    units: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name == "stages" and isinstance(child, nn.Sequential):
            units += [(f"stages.{i}", s) for i, s in enumerate(child)]
        else:
            units.append((name, child))
    return units


def profile_model(model: nn.Module, input_shape: Iterable[int], *, device: str | torch.device = "meta") -> Profile:
    """Params and MACs of ``model`` for one input of ``input_shape`` (B, C, H, W).

    ``device="meta"`` needs the model on the meta device too (``profile_name`` builds it there);
    pass ``device="cpu"`` for a model that already holds real weights.
    """
    input_shape = tuple(int(v) for v in input_shape)
    total = {"macs": 0}
    per_layer: dict[str, int] = {}
    stage_shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def count(module, args, out):
        macs = _layer_macs(module, args[0], out)
        total["macs"] += macs
        per_layer[names[module]] = per_layer.get(names[module], 0) + macs

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            handles.append(m.register_forward_hook(count))
    units = _stage_modules(model)
    for unit_name, unit in units:
        handles.append(unit.register_forward_hook(
            lambda mod, args, out, _n=unit_name: stage_shapes.__setitem__(_n, _shape_of(out))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stages = []
    for unit_name, unit in units:
        prefix = unit_name + "."
        macs = sum(v for k, v in per_layer.items() if k == unit_name or k.startswith(prefix))
        stages.append(StageProfile(unit_name, count_params(unit), macs, stage_shapes.get(unit_name, ())))
    return Profile(count_params(model), total["macs"], input_shape, _shape_of(out), tuple(stages))


def _shape_of(out) -> tuple[int, ...]:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return tuple(out[0].shape)
    return ()


def profile_name(name: str, **overrides) -> Profile:
    """Profile a registered model at its default (or overridden) input size, on the meta device."""
    from .registry import create_model

    with torch.device("meta"):
        model = create_model(name, **overrides)
    c, h, w = model.default_cfg["input_size"]
    return profile_model(model, (1, c, h, w), device="meta")


def peak_activation_bytes(model: nn.Module, input_shape: Iterable[int]) -> int:
    """The largest input + output of any one layer for an input of ``input_shape`` (float32), from a
    pass on the meta device (shapes only: nothing is allocated). A network the meta device cannot
    run (data-dependent code) is bounded by its input alone."""
    input_shape = tuple(int(v) for v in input_shape)
    peak = [4 * math.prod(input_shape)]

    def size(module, args, out):
        tensors = [t for t in (*args, out) if isinstance(t, torch.Tensor)]
        peak[0] = max(peak[0], sum(4 * t.numel() for t in tensors))

    handles = [m.register_forward_hook(size) for m in model.modules() if not list(m.children())]
    state = {k: v.to("meta") for k, v in (*model.named_parameters(), *model.named_buffers())}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (torch.empty(input_shape, device="meta"),))
    except (RuntimeError, NotImplementedError, TypeError):  # the input bound stands
        return 4 * math.prod(input_shape)
    finally:
        for h in handles:
            h.remove()
    return peak[0]


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# a layer's input + output as a multiple of the network's input volume, far above any CNN here (the
# widest stems reach about 20x): below this bound the exact meta-device pass is skipped
ACTIVATION_BOUND = 1024


def check_fits_in_memory(model: nn.Module, input_size: Iterable[int], *, images: int, batch: int) -> None:
    """Refuse an input size whose ``images`` stacked inputs plus a ``batch`` of one layer's input
    and output cannot fit in the available memory, before anything of that size is allocated."""
    shape = tuple(int(v) for v in input_size)
    have = available_memory()
    if (images + batch * ACTIVATION_BOUND) * 4 * math.prod(shape) <= have // 4:
        return  # fits even if a layer held ACTIVATION_BOUND inputs' worth: the meta pass is not needed
    need = images * 4 * math.prod(shape) + batch * peak_activation_bytes(model, (1, *shape))
    if need > have:
        raise ValueError(f"input size {'x'.join(map(str, shape))} needs about {need / 2**30:,.1f} GiB for its "
                         f"images and activations, and {have / 2**30:,.1f} GiB is available; choose a smaller "
                         f"--resolution (or --input-size)")


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    if n == 0:
        return "0"
    exp = min(int(math.log10(abs(n)) // 3), 4)
    if exp <= 0:
        return f"{n:g}"
    return f"{n / 10 ** (3 * exp):.2f}{['', 'K', 'M', 'G', 'T'][exp]}"
