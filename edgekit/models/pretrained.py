"""timm checkpoints of the zoo's networks: ``timm:NAME`` plus a weights file.

timm's GhostNet, EfficientNet and FBNet are the zoo's networks under other tensor names, with a few
exact differences, which the variant table below states and the builders reproduce:

- timm's own EfficientNets (``efficientnet_*``, ``efficientnetv2_*``) use BatchNorm eps 1e-5; the
  TensorFlow ports (``tf_*``) keep TF's 1e-3, as the zoo does, and TF's "SAME" padding, which is
  asymmetric at stride 2 (``ArchSpec.padding="same"``);
- ``fbnetc_100`` has a 1x1 expansion conv in its expansion-1 blocks (``BlockSpec.pw_always``);
- ``fbnetv3_b`` pads its stride-2 depthwise convs ``k // 2`` where the published definition, which
  the zoo follows, uses smaller overrides.

Tensors are matched by name (published checkpoints store their keys sorted, not in module order),
so every tensor of the checkpoint has exactly one place in the network and the reverse. timm itself
is never imported. ``.safetensors``, ``.pth``, ``.pth.tar``, ``.pt`` and ``.bin`` are read; a pickle
is read with ``weights_only`` (never executed); fp16 and bf16 tensors become fp32.

>>> sorted(TIMM)[:3]
['efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2']
"""
from __future__ import annotations

import difflib
import functools
import io
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..exporters.artifact import sha256_bytes
from .arch import ArchNet, from_arch
from .registry import create_model

__all__ = ["TIMM", "TimmVariant", "is_timm", "load_checkpoint", "load_timm", "timm_mapping"]

PREFIX = "timm:"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class TimmVariant:
    """A timm name: the zoo network it is, how it differs, and timm's evaluation preprocessing
    (input side, centre-crop share, interpolation, mean / std) for its published weights."""

    zoo: str
    family: str  # "ghostnet" | "efficientnet" | "fbnet" | "fbnetv3": how tensor names translate
    resolution: int
    crop_pct: float
    interpolation: str
    stats: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET
    bn_eps: float | None = None  # None: the zoo network's own
    tf_padding: bool = False
    pw_always: bool = False
    plain_dw_padding: bool = False


def _table() -> dict[str, TimmVariant]:
    t: dict[str, TimmVariant] = {}
    for name, zoo in (("ghostnet_050", "ghostnet_0_5"), ("ghostnet_100", "ghostnet_1_0"),
                      ("ghostnet_130", "ghostnet_1_3"), ("ghostnetv2_100", "ghostnetv2_1_0"),
                      ("ghostnetv2_130", "ghostnetv2_1_3"), ("ghostnetv2_160", "ghostnetv2_1_6")):
        t[name] = TimmVariant(zoo, "ghostnet", 224, 0.875, "bicubic")
    # timm's own training: input side and crop share per B-level (B1 with inception statistics)
    own = {0: (224, 0.875), 1: (240, 0.9), 2: (256, 0.875), 3: (288, 0.875), 4: (320, 0.875), 5: (448, 1.0),
           6: (528, 0.942), 7: (600, 0.949)}
    tf = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.89), 3: (300, 0.904), 4: (380, 0.922), 5: (456, 0.934),
          6: (528, 0.942), 7: (600, 0.949)}
    for b in range(8):
        t[f"efficientnet_b{b}"] = TimmVariant(f"efficientnet_b{b}", "efficientnet", *own[b], "bicubic",
                                              INCEPTION if b == 1 else IMAGENET, bn_eps=1e-5)
        t[f"tf_efficientnet_b{b}"] = TimmVariant(f"efficientnet_b{b}", "efficientnet", *tf[b], "bicubic",
                                                 tf_padding=True)
    for size, own_res, tf_res in (("s", 288, 300), ("m", 320, 384), ("l", 384, 384)):
        t[f"efficientnetv2_{size}"] = TimmVariant(f"efficientnetv2_{size}", "efficientnet", own_res, 1.0, "bicubic",
                                                  bn_eps=1e-5)
        t[f"tf_efficientnetv2_{size}"] = TimmVariant(f"efficientnetv2_{size}", "efficientnet", tf_res, 1.0,
                                                     "bicubic", INCEPTION, tf_padding=True)
    t["fbnetc_100"] = TimmVariant("fbnet_c", "fbnet", 224, 0.875, "bilinear", pw_always=True)
    t["fbnetv3_b"] = TimmVariant("fbnetv3_b", "fbnetv3", 224, 0.95, "bilinear", plain_dw_padding=True)
    t["fbnetv3_d"] = TimmVariant("fbnetv3_d", "fbnetv3", 224, 0.95, "bilinear")
    t["fbnetv3_g"] = TimmVariant("fbnetv3_g", "fbnetv3", 240, 0.95, "bilinear")
    return t


TIMM: dict[str, TimmVariant] = _table()


def is_timm(spec: str) -> bool:
    return spec.startswith(PREFIX)


def variant(spec: str) -> tuple[str, TimmVariant]:
    name = spec.removeprefix(PREFIX)
    if name not in TIMM:
        close = difflib.get_close_matches(name, TIMM, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint} (edgekit maps {len(TIMM)}: {', '.join(sorted(TIMM))})")
    return name, TIMM[name]


# ---- reading a checkpoint ----------------------------------------------------------------------

def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict with float tensors as fp32, sha256 of the file). A dict holding the state dict
    under ``state_dict`` or ``model`` is unwrapped, and a ``module.`` prefix (DataParallel) dropped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors
        try:
            blob: Any = load_safetensors(raw)
        except (SafetensorError, ValueError) as e:
            raise ValueError(f"checkpoint {path} is not a readable safetensors file ({e}); is it truncated?") from None
    else:
        try:
            blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a truncated, foreign or code-carrying pickle
            text = str(e)
            if "weights_only" in text or "Unsupported global" in text:
                raise ValueError(f"checkpoint {path} holds pickled Python objects besides tensors; edgekit reads "
                                 f"checkpoints with weights_only and never runs code from them: save the state "
                                 f"dict alone (torch.save(model.state_dict(), ...)) or as .safetensors") from None
            raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {text.splitlines()[0] if text else ''})"
                             f"; is it truncated?") from None
    for key in ("state_dict", "model"):
        if isinstance(blob, Mapping) and isinstance(blob.get(key), Mapping):
            blob = blob[key]
            break
    if not isinstance(blob, Mapping) or not blob:
        raise ValueError(f"checkpoint {path} holds {type(blob).__name__}, not a state dict of tensors")
    state = {}
    for key, value in blob.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint {path}: entry {key!r} is {type(value).__name__}, not a tensor; a state "
                             f"dict holds tensors only")
        if value.dtype in (torch.float16, torch.bfloat16, torch.float64):
            value = value.float()
        state[str(key).removeprefix("module.")] = value
    return state, sha256_bytes(raw)


# ---- tensor names ------------------------------------------------------------------------------

_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)")
_GHOST = {"conv_dw": "conv_dw.0", "bn_dw": "conv_dw.1", "shortcut.0": "shortcut.0.0", "shortcut.1": "shortcut.0.1",
          "shortcut.2": "shortcut.1.0", "shortcut.3": "shortcut.1.1",
          **{f"ghost1.short_conv.{i}": f"ghost1.dfc.{part}.{i % 2}"
             for i, part in enumerate(("reduce", "reduce", "horizontal", "horizontal", "vertical", "vertical"))}}
# a timm network's head tensors -> the zoo's, per family
_TOP = {
    "ghostnet": {"conv_head": "head.conv_head"},
    "efficientnet": {"conv_head": "head.conv.0", "bn2": "head.conv.1"},
    "fbnet": {"conv_head": "head.conv.0", "bn2": "head.conv.1"},
    "fbnetv3": {"conv_head": "head.post.0"},
}
# the module a timm network's last ConvBnAct "block" is in the zoo's (it has one block more)
_TAIL = {"ghostnet": "final_conv", "fbnetv3": "head.conv"}


def _block_names(modules: set[str], family: str) -> dict[str, str]:
    """timm module names inside one block -> the zoo block's, by the kind of block timm's names show."""
    pw, dw, pwl = ("conv_pw", "conv_dw", "conv_pwl") if family == "efficientnet" else ("pw", "dw", "pwl")
    if any(m.startswith("ghost1.") for m in modules):
        return _GHOST
    if "conv_exp" in modules:  # Fused-MBConv
        return {"conv_exp": "conv.0", "bn1": "conv.1", "conv_pwl": "conv_pwl.0", "bn2": "conv_pwl.1"}
    if "conv_pwl" in modules:  # inverted residual
        return {"conv_pw": f"{pw}.0", "bn1": f"{pw}.1", "conv_dw": f"{dw}.0", "bn2": f"{dw}.1",
                "conv_pwl": f"{pwl}.0", "bn3": f"{pwl}.1"}
    if "conv_dw" in modules:  # depthwise-separable
        return {"conv_dw": f"{dw}.0", "bn1": f"{dw}.1", "conv_pw": f"{pwl}.0", "bn2": f"{pwl}.1"}
    return {"conv": "conv.0", "bn1": "conv.1"}  # conv + BN + act


def _rename(module: str, table: Mapping[str, str]) -> str:
    for old in sorted(table, key=len, reverse=True):  # the longest prefix first
        if module == old or module.startswith(old + "."):
            return table[old] + module[len(old):]
    return module


def timm_mapping(keys: list[str], family: str, zoo_blocks: list[str]) -> dict[str, str]:
    """timm tensor name -> the zoo network's, for every key of a timm state dict. ``zoo_blocks``
    are the zoo network's block prefixes in order (``stages.0.0``, ...): the n-th timm block (in
    index order, whatever the stage grouping) is the n-th of them."""
    blocks: dict[tuple[int, int], list[str]] = {}
    mapping = {}
    for key in keys:
        m = _BLOCK.fullmatch(key)
        if m:
            blocks.setdefault((int(m[1]), int(m[2])), []).append(key)
        else:
            module, _, leaf = key.rpartition(".")
            top = {"conv_stem": "stem.0", "bn1": "stem.1", "classifier": "head.classifier", **_TOP[family]}
            mapping[key] = f"{_rename(module, top)}.{leaf}"
    order = sorted(blocks)
    tail = order[len(zoo_blocks):] if family in _TAIL else []
    for n, index in enumerate(order):
        members = blocks[index]
        rest = {k: _BLOCK.fullmatch(k)[3] for k in members}
        modules = {r.rpartition(".")[0] for r in rest.values()}
        table = _block_names(modules, family)
        if index in tail:  # conv + BN + act outside the zoo network's blocks
            prefix, table = _TAIL[family], {"conv": "0", "bn1": "1"}
        elif n < len(zoo_blocks):
            prefix = zoo_blocks[n]
        else:
            prefix = f"stages.extra{n}"  # more blocks than the network: reported as not fitting
        for key, r in rest.items():
            module, _, leaf = r.rpartition(".")
            mapping[key] = f"{prefix}.{_rename(module, table)}.{leaf}"
    return mapping


# ---- building -----------------------------------------------------------------------------------

def _network(v: TimmVariant, num_classes: int, resolution: int | None = None) -> nn.Module:
    model = create_model(v.zoo, num_classes=num_classes, resolution=resolution or v.resolution)
    if isinstance(model, ArchNet):
        spec = model.spec
        if v.bn_eps is not None:
            spec = spec.replace(bn_eps=v.bn_eps)
        if v.tf_padding:
            spec = spec.replace(padding="same")
        if v.pw_always or v.plain_dw_padding:
            stages = tuple(tuple(replace(b, pw_always=v.pw_always and b.expansion == 1,
                                         dw_padding=None if v.plain_dw_padding else b.dw_padding) for b in stage)
                           for stage in spec.stages)
            spec = spec.replace(stages=stages)
        if spec != model.spec:
            cfg = model.default_cfg
            model = from_arch(spec, num_classes=num_classes, in_chans=3)
            model.default_cfg = cfg
    return model


def _classes(state: Mapping[str, torch.Tensor], name: str) -> int:
    weight = state.get("classifier.weight")
    if weight is None:
        raise ValueError(f"the checkpoint has no classifier.weight, so it is not a timm {name} (its first keys: "
                         f"{', '.join(sorted(state)[:4])})")
    return int(weight.shape[0])


def _zoo_blocks(model: nn.Module) -> list[str]:
    return sorted({m[0] for k in model.state_dict() if (m := re.match(r"stages\.\d+\.\d+", k))},
                  key=lambda p: tuple(int(v) for v in p.split(".")[1:]))


def _fit(model: nn.Module, state: Mapping[str, torch.Tensor], name: str, v: TimmVariant) -> dict[str, torch.Tensor]:
    """The checkpoint renamed to the network's keys; the first tensor that does not fit is named,
    with the timm variant the checkpoint looks like."""
    mapping = timm_mapping(list(state), v.family, _zoo_blocks(model))
    own = {k: t for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = {}
    for key in sorted(state, key=_natural):
        if key.endswith("num_batches_tracked"):
            continue
        target, tensor = mapping[key], state[key]
        if target not in own:
            _misfit(state, name, f"tensor {key} {tuple(tensor.shape)} has no place in timm:{name}")
        want = own[target].shape
        if tensor.shape != want:
            if tensor.numel() == own[target].numel() and tensor.shape == want[:tensor.ndim]:
                tensor = tensor.reshape(want)  # a linear classifier into a 1x1-conv classifier
            else:
                _misfit(state, name, f"tensor {key} has shape {tuple(tensor.shape)}; timm:{name} has "
                                     f"{tuple(want)} there")
        out[target] = tensor.to(own[target].dtype)
    missing = [k for k in own if k not in out]
    if missing:
        back = {t: k for k, t in mapping.items()}
        _misfit(state, name, f"the checkpoint lacks a tensor timm:{name} needs ({back.get(missing[0], missing[0])})")
    return out


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def _signature(state: Mapping[str, Any]) -> Counter:
    return Counter(tuple(int(d) for d in t.shape) for k, t in state.items() if not k.endswith("num_batches_tracked"))


def _misfit(state: Mapping[str, torch.Tensor], name: str, what: str) -> None:
    like = looks_like(state)
    hint = f"; it looks like timm:{like}" if like and like != name else ""
    raise ValueError(f"the checkpoint does not fit timm:{name}: {what}{hint}")


@functools.lru_cache(maxsize=None)
def _variant_signature(name: str, num_classes: int) -> Counter:
    with torch.device("meta"):  # shapes only: nothing allocated
        return _signature(_network(TIMM[name], num_classes).state_dict())


def looks_like(state: Mapping[str, torch.Tensor]) -> str | None:
    """The timm variant whose tensor shapes the checkpoint's match best (most shapes in common), or
    None when none shares most of them. Shapes cannot tell a ``tf_`` port from timm's own training."""
    have = _signature(state)
    best, best_score = None, 0.0
    for name in TIMM:
        if name.startswith("tf_"):
            continue
        try:
            want = _variant_signature(name, _classes(state, name))
        except ValueError:
            return None
        score = sum((have & want).values()) / max(sum(have.values()), sum(want.values()))
        if score > best_score:
            best, best_score = name, score
    return best if best_score > 0.5 else None


def load_timm(spec: str, weights: str | Path, *, resolution: int | None = None) -> tuple[nn.Module, str]:
    """The zoo network for ``timm:NAME`` with the checkpoint's weights, in eval mode, its
    ``default_cfg`` carrying timm's preprocessing for that name (at ``resolution`` instead of timm's
    input side when given); and the checkpoint's sha256."""
    name, v = variant(spec)
    state, sha = load_checkpoint(weights)
    model = _network(v, _classes(state, name), resolution)
    model.load_state_dict(_fit(model, state, name, v), strict=False)  # num_batches_tracked stays the model's
    mean, std = v.stats
    model.default_cfg = {**model.default_cfg, "name": f"{PREFIX}{name}", "mean": list(mean), "std": list(std),
                         "crop_pct": v.crop_pct, "interpolation": v.interpolation}
    return model.eval(), sha
