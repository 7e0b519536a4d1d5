"""litert-torch's tensor names -> the PyTorch modules they came from. The converter names a tensor
after the module stacks of the nodes fused into it, joined by ';', each stack
``<class>_<attr>/<class>_<attr>/...`` starting at the NHWC wrapper (``..._ChannelsLast/..._model/``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["module_paths", "layer_of"]


def module_paths(name: str, model: nn.Module) -> list[str]:
    """The path in ``model`` of each module stack of the tensor ``name`` that walks ``model``'s
    children ('' for ``model`` itself); stacks outside the NHWC wrapper's model are left out."""
    paths = []
    for loc in name.split(";"):
        parts = loc.split("/")
        if len(parts) < 2 or not parts[0].endswith("_ChannelsLast"):
            continue
        path = _walk(model, parts[2:]) if parts[1].endswith("_model") else None
        if path is not None:
            paths.append(path)
    return paths


def layer_of(name: str, model: nn.Module) -> str | None:
    """The module path of the layer the tensor ``name`` came from: of the stacks in its name, the
    one whose last module has a weight of rank >= 2 (the conv, not the BN or activation fused into it)."""
    paths = module_paths(name, model)
    for path in paths:
        weight = getattr(model.get_submodule(path), "weight", None) if path else None
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            return path
    return paths[0] if paths and paths[0] else None


def _walk(model: nn.Module, segments: Sequence[str]) -> str | None:
    """'features.2.conv' from ['torch.nn.modules.container.Sequential_features', ..., 'torch.nn...Conv2d_conv']."""
    module, path = model, []
    for seg in segments:
        for attr, child in module.named_children():
            cls = type(child)
            if seg == f"{cls.__module__}.{cls.__qualname__}_{attr}":
                module = child
                path.append(attr)
                break
        else:
            return None
    return ".".join(path)
