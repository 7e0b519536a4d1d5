"""Networks that are not in the zoo: a factory in a Python file or module, or a saved
``torch.export`` program, described well enough for the exporters (input size, normalisation,
outputs) and recorded so that ``validate`` and ``run --compare`` can build the same network again.

    path/to/net.py:make_net      a callable in a file (imported under a private name)
    mypackage.nets:make_net      a callable in an importable module
    path/to/net.pt2              a program saved with ``torch.export.save``

>>> # model, source = load_external("nets.py:tiny"); describe(model, input_size=(3, 64, 64))  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..exporters.artifact import sha256_file

__all__ = ["PRESETS", "Source", "is_external", "load_external", "load_timm_source", "describe", "rebuild",
           "state_digest"]

# name -> (mean, std) per channel; a 1-channel model takes the first value of a 3-channel preset's
# mean of the three (grey images are the luminance of the RGB ones)
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class Source:
    """Where an external network came from: ``kind`` ``factory``, ``program`` or ``timm`` (a timm
    checkpoint of a zoo network, ``models.pretrained``); ``spec`` as the user
    gave it (a file path made absolute); ``file_sha256`` of the .py / .pt2 file (None for a module
    found on the import path); ``state_sha256``: digest of every parameter and buffer at export,
    so a rebuilt network is known to be the same one."""

    kind: str
    spec: str
    file_sha256: str | None
    state_sha256: str
    weights: str | None = None  # kind ``timm``: the checkpoint file (absolute), whose sha256 is file_sha256
    resolution: int | None = None  # kind ``timm``: the input side, when not timm's own

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_external(name: str) -> bool:
    """Whether a model argument names an external network rather than a zoo variant."""
    return name.endswith(".pt2") or ":" in name


def state_digest(model: nn.Module) -> str:
    """sha256 over every parameter's and buffer's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                     else t.numpy().tobytes())
    return h.hexdigest()


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


@contextlib.contextmanager
def _beside(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _factory(spec: str) -> tuple[Any, Path | None]:
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ValueError(f"model {spec!r}: name a factory as path/to/file.py:function or package.module:function")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"model {spec!r}: {path} does not exist")
        name = f"_edgekit_external_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            with _beside(path):  # the file's own folder importable, as when it is run as a script
                module_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: any error it raises on import
            raise ValueError(f"model {spec!r}: importing {path.name} failed: {_short(e)}") from None
        file = path
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # ImportError, or whatever the module raises while importing
            raise ValueError(f"model {spec!r}: importing {where} failed: {_short(e)}") from None
        file = None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"model {spec!r}: {where} has no callable {attr!r} (it has {', '.join(found[:12]) or 'none'})")
    return factory, file


def load_external(spec: str) -> tuple[nn.Module, Source]:
    """The network ``spec`` names (a factory called without arguments, or a saved program), in
    eval mode, and where it came from."""
    if spec.endswith(".pt2"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"model {spec!r}: {path} does not exist")
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # a truncated or foreign file: torch raises several kinds
            raise ValueError(f"model {spec!r}: not a torch.export program ({_short(e)}); save one with "
                             f"torch.export.save(torch.export.export(model, (example,)), 'net.pt2')") from None
        model = _Program(program.module(), _static_batch(program))
        return model, Source("program", str(path), sha256_file(path), state_digest(model))
    factory, file = _factory(spec)
    required = []
    try:
        required = [p.name for p in inspect.signature(factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):  # a builtin or C callable without a signature: call it and see
        required = []
    if required:
        raise ValueError(f"model {spec!r}: the factory needs argument(s) {required}; edgekit calls it with none. "
                         f"Wrap it: def make(): return {spec.rpartition(':')[2]}(...)")
    try:
        with _beside(file):
            model = factory()
    except Exception as e:  # the user's code
        raise ValueError(f"model {spec!r}: calling the factory failed: {_short(e)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    stored = spec if file is None else f"{file}:{spec.rpartition(':')[2]}"
    return model.eval(), Source("factory", stored, None if file is None else sha256_file(file), state_digest(model))


def _stats(values: Sequence[float] | None, preset: str | None, c: int, what: str) -> tuple[float, ...]:
    if values is not None:
        values = tuple(float(v) for v in values)
        if len(values) == 1:
            return values * c
        if len(values) != c:
            raise ValueError(f"--{what} has {len(values)} values for {c} input channel(s); give {c} (or one for all)")
        return values
    base = PRESETS[preset or "imagenet"][0 if what == "mean" else 1]
    if c == 3:
        return base
    return (sum(base) / 3,) * c


def describe(model: nn.Module, *, input_size: Sequence[int], mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, preset: str | None = None, name: str = "model") -> nn.Module:
    """Give ``model`` the ``default_cfg`` the exporters read: ``input_size`` (C, H, W), mean and std
    (given, or a preset's: imagenet by default), the number of outputs and, for (1, K) logits, the
    number of classes. The module is run once on zeros of that size; its own error says why a size
    does not fit it."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input size {size} must be C,H,W with every value >= 1, e.g. 3,224,224")
    c, h, w = size
    m, s = _stats(mean, preset, c, "mean"), _stats(std, preset, c, "std")
    if any(v <= 0 for v in s):
        raise ValueError(f"std {s} must be > 0 in every channel")
    model = model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, h, w))
    except Exception as e:  # the module's own check of its input
        raise ValueError(f"{name} rejects an input of shape (1, {c}, {h}, {w}) ({_short(e)}); give the size it "
                         f"takes with --input-size C,H,W") from None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        kinds = type(out).__name__ if not isinstance(out, (tuple, list)) else \
            ", ".join(type(o).__name__ for o in outs) or "nothing"
        raise ValueError(f"{name} returns {kinds}; edgekit exports modules that return a tensor or a tuple of "
                         f"tensors")
    first = outs[0]
    cfg = {"input_size": [c, h, w], "mean": list(m), "std": list(s), "num_outputs": len(outs),
           "output_shapes": [list(o.shape) for o in outs], "task": "classification" if first.ndim == 2 else "other"}
    if first.ndim == 2:
        cfg["num_classes"] = int(first.shape[1])
    try:
        model.default_cfg = cfg
    except (AttributeError, TypeError):  # a module that forbids new attributes: wrap it
        model = _Described(model, cfg)
    return model


class _Program(nn.Module):
    """A loaded ``torch.export`` program as an ordinary module. The program's graph module refuses
    ``train()`` / ``eval()`` (its mode was fixed when it was exported), so they stop here."""

    def __init__(self, graph: nn.Module, batch: int | None):
        super().__init__()
        self.program = graph
        self.batch = batch  # the batch size the program was exported with, unless it is dynamic

    def train(self, mode: bool = True) -> "_Program":
        self.training = mode
        return self

    def forward(self, x):
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        if self.batch == 1:  # exported for one image at a time: run a batch image by image
            outs = [self.program(x[i:i + 1]) for i in range(x.shape[0])]
            if isinstance(outs[0], torch.Tensor):
                return torch.cat(outs)
            return tuple(torch.cat(parts) for parts in zip(*outs))
        raise ValueError(f"the program was exported for batch {self.batch}; it cannot take a batch of {x.shape[0]}")


def _static_batch(program) -> int | None:
    """The first input's batch size if the program fixed it, None if it is dynamic."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            dim = val.shape[0] if val is not None and val.dim() else None
            return dim if isinstance(dim, int) else None
    return None


class _Described(nn.Module):
    def __init__(self, inner: nn.Module, cfg: Mapping[str, Any]):
        super().__init__()
        self.inner = inner
        self.default_cfg = dict(cfg)

    def forward(self, *args):
        return self.inner(*args)


def load_timm_source(spec: str, weights: str | Path, resolution: int | None = None) -> tuple[nn.Module, Source]:
    """A timm checkpoint of a zoo network (``timm:NAME`` + file) and its Source."""
    from .pretrained import load_timm
    model, sha = load_timm(spec, weights, resolution=resolution)
    return model, Source("timm", spec, sha, state_digest(model), str(Path(weights).resolve()), resolution)


def rebuild(source: Mapping[str, Any], weights: str | Path | None = None) -> nn.Module:
    """The network a manifest's ``source`` names, checked to hold the same weights as at export
    (for a timm checkpoint, ``weights`` stands in for a file that has moved)."""
    if source["kind"] == "timm":
        path = Path(weights or source["weights"])
        if not path.is_file():
            raise ValueError(f"the checkpoint {path} of {source['spec']} is gone; pass --weights FILE")
        model, now = load_timm_source(source["spec"], path, source.get("resolution"))
        if now.file_sha256 != source["file_sha256"]:
            raise ValueError(f"{path} is not the checkpoint the file was exported from (sha256 differs); pass the right "
                             f"--weights FILE or re-export")
        return model
    model, now = load_external(source["spec"])
    if source.get("file_sha256") and now.file_sha256 != source["file_sha256"]:
        raise ValueError(f"{source['spec']} changed since the export (sha256 differs); re-export, or pass --weights")
    if now.state_sha256 != source["state_sha256"]:
        raise ValueError(f"{source['spec']} now builds different weights than at export (state digest differs): the "
                         f"factory is not deterministic or its checkpoint changed; re-export")
    return model
