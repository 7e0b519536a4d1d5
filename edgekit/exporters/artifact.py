"""Artifact = an exported model file plus ``X.manifest.json`` beside it.

The manifest says everything a device needs to feed the file and everything a reader needs to trust
it: model name, ArchSpec and weights hash; format; precision (``fp32``, ``int8`` = integer weights
AND activations, ``int8-weights`` = dynamic range, ``mixed`` with the float layers); inputs and
outputs (name, shape, dtype, layout, scale / zero point); preprocessing; calibration; tool versions;
the model file's sha256. All files of an export are written under temporary names and renamed only
when all are written, so a failed export (a full disk) leaves nothing.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["FORMATS", "PRECISIONS", "TensorInfo", "Preprocessing", "Calibration", "Manifest", "Artifact",
           "sha256_file", "sha256_bytes", "atomic_write_bytes", "check_out_dir", "write_artifact", "write_artifacts", "load_artifact", "manifest_path"]

SCHEMA_VERSION = 1
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8", "int8-weights", "mixed")
LAYOUTS = ("NCHW", "NHWC", "NC", "")  # "" = not an image tensor
DTYPES = ("float32", "int8", "uint8", "int32", "int64")


def _choice(owner: str, label: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{owner}: {label} {value!r} must be one of {choices}")


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the file declares it; scale/zero_point only for int8/uint8."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = ""
    scale: float | None = None
    zero_point: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        _choice(f"tensor {self.name!r}", "dtype", self.dtype, DTYPES)
        _choice(f"tensor {self.name!r}", "layout", self.layout, LAYOUTS)
        if (self.scale is None) != (self.zero_point is None):
            raise ValueError(f"tensor {self.name!r}: scale and zero_point go together")
        if self.dtype in ("int8", "uint8") and self.scale is None:
            raise ValueError(f"tensor {self.name!r}: a quantized ({self.dtype}) tensor needs scale and zero_point")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"tensor {self.name!r}: scale {self.scale} must be > 0")

    def from_nchw(self, x: Any) -> Any:
        """(N, C, H, W) images (numpy) laid out as this input takes them: channels last when it is
        NHWC; C-contiguous, as the runtimes want them."""
        import numpy as np
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if self.layout == "NHWC" else x)

    def to_nchw(self, y: Any) -> Any:
        """Values of this output channels first again when it is an NHWC map; others unchanged."""
        return y.transpose(0, 3, 1, 2) if self.layout == "NHWC" and y.ndim == 4 else y


# "bilinear" / "nearest": torch's interpolate; "-aa": Pillow's antialiased filters (timm's evaluation)
RESIZE_MODES = ("bilinear", "nearest", "bicubic-aa", "bilinear-aa")


@dataclass(frozen=True)
class Preprocessing:
    """What turns a stored image into the model's float input: resize to ``resolution`` (H, W),
    replicate or keep ``channels``, scale to [0, 1], subtract ``mean``, divide by ``std``; then the
    input is laid out as the model's input TensorInfo says."""

    resolution: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"  # or "L" for one grey channel
    resize: str = "bilinear"
    # share of the image a centre crop keeps: images of any size from a folder are resized so the
    # shorter side is resolution / crop_pct, then cropped to resolution (1.0: resized whole, as before)
    crop_pct: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "resolution", tuple(int(v) for v in self.resolution))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.resolution) != 2 or min(self.resolution) < 1:
            raise ValueError(f"preprocessing resolution {self.resolution} must be (H, W) >= 1")
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"preprocessing mean {self.mean} / std {self.std} need one value per channel "
                             f"({self.channels})")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preprocessing std {self.std} must be > 0")
        _choice("preprocessing", "channel_order", self.channel_order, ("RGB", "BGR", "L"))
        _choice("preprocessing", "resize", self.resize, RESIZE_MODES)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"preprocessing crop_pct {self.crop_pct} must be in (0, 1]")


@dataclass(frozen=True)
class Calibration:
    """Where the int8 ranges came from. ``synthetic=True`` only when the user asked for it."""

    dataset: str
    samples: int
    method: str
    synthetic: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"calibration samples {self.samples} must be >= 1")
        object.__setattr__(self, "details", dict(self.details))


@dataclass(frozen=True)
class Manifest:
    model: str
    format: str
    precision: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    preprocessing: Preprocessing | None
    file_sha256: str
    arch: Mapping[str, Any] | None = None  # ArchSpec.to_dict() where the model is one
    weights_sha256: str | None = None
    weights_file: str | None = None  # where the PyTorch weights were read from (validate re-reads them)
    num_classes: int | None = None
    calibration: Calibration | None = None
    float_layers: tuple[str, ...] = ()  # precision "mixed": the layers kept in float
    tools: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # warnings the user must see (synthetic data, slower int8, ...)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # parity measured at export
    source: Mapping[str, Any] | None = None  # an external network: factory or program (models.external.Source)

    def __post_init__(self):
        _choice("manifest", "format", self.format, FORMATS)
        _choice("manifest", "precision", self.precision, PRECISIONS)
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "float_layers", tuple(self.float_layers))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.inputs or not self.outputs:
            raise ValueError("manifest: a model needs at least one input and one output")
        if self.precision == "mixed" and not self.float_layers:
            raise ValueError("manifest: precision 'mixed' must list its float layers")
        if self.precision != "mixed" and self.float_layers:
            raise ValueError(f"manifest: float_layers are only for precision 'mixed', not {self.precision!r}")
        if self.precision in ("int8", "mixed") and self.calibration is None:
            raise ValueError(f"manifest: precision {self.precision!r} needs its calibration recorded")
        if len(self.file_sha256) != 64:
            raise ValueError(f"manifest: file_sha256 {self.file_sha256!r} is not a sha256 hex digest")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **_plain(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        d = dict(d)
        version = d.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise ValueError(f"manifest schema_version {version!r} is not supported (this edgekit reads "
                             f"{SCHEMA_VERSION}); re-export the model")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"manifest has unknown field(s) {unknown}")
        try:
            d["inputs"] = tuple(TensorInfo(**t) for t in d["inputs"])
            d["outputs"] = tuple(TensorInfo(**t) for t in d["outputs"])
            if d.get("preprocessing") is not None:
                d["preprocessing"] = Preprocessing(**d["preprocessing"])
            if d.get("calibration") is not None:
                d["calibration"] = Calibration(**d["calibration"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"manifest is malformed: {e}") from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ---- files ------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".manifest.json")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``path``."""
    path = Path(path)
    tmp = _temp_copy(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _temp_copy(path: Path, data: bytes) -> Path:
    """``data`` in a temporary file beside ``path`` (fsynced), to be renamed over it; nothing stays
    when writing fails."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; the result should look like any written file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def check_out_dir(out: str | os.PathLike) -> None:
    """Refuse an output directory that cannot be one: a file, or a missing one whose nearest
    existing parent is not a writable directory (a missing one is created when files are written)."""
    out = Path(out)
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir():
        raise ValueError(f"output directory {out}: {parent} is a file, not a directory; pass another --out")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"output directory {parent} is not writable; pass another --out")


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)


def write_artifact(path: str | os.PathLike, model_bytes: bytes, manifest: Manifest) -> Artifact:
    """Write one model file and its manifest (see ``write_artifacts``)."""
    return write_artifacts([(Path(path), model_bytes, manifest)])[0]


def write_artifacts(files: Sequence[tuple[Path, bytes, Manifest]]) -> list[Artifact]:
    """Write every (path, model bytes, manifest) under temporary names, and rename them only when
    all are written, manifests last: a manifest on disk always describes a complete model file, and
    a failure (a full disk) leaves none of them, nor a directory this call created."""
    texts = []
    for path, data, manifest in files:
        if manifest.file_sha256 != sha256_bytes(data):
            raise ValueError(f"manifest file_sha256 of {path.name} does not match the model bytes being written")
        texts.append((manifest_path(path), (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()))
    pending = [(Path(path), data) for path, data, _ in files] + texts
    for folder in {p.parent for p, _ in pending}:
        check_out_dir(folder)
    created = {d for folder in {p.parent for p, _ in pending} for d in (folder, *folder.parents) if not d.exists()}
    temps: list[Path] = []
    renamed: list[Path] = []
    try:
        for folder in created:
            folder.mkdir(parents=True, exist_ok=True)
        for p, data in pending:
            temps.append(_temp_copy(p, data))
        for tmp, (path, _) in zip(temps, pending):
            os.replace(tmp, path)
            renamed.append(path)
    except BaseException as e:
        for written in [*temps, *renamed]:
            written.unlink(missing_ok=True)
        for folder in sorted(created, key=lambda d: len(d.parts), reverse=True):
            folder.rmdir()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            need = sum(len(data) for _, data in pending) / 1e6
            raise ValueError(f"no space left on {pending[0][0].parent}: need about {need:.1f} MB; free space or "
                             f"choose another --out") from None
        raise
    return [Artifact(Path(path), manifest) for path, _, manifest in files]


def load_artifact(path: str | os.PathLike, *, verify: bool = True) -> Artifact:
    """Read ``X.onnx``/``X.tflite`` and its manifest; ``verify`` checks the file's sha256, so a
    truncated or corrupted model file is caught before a runtime sees it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise ValueError(f"{path} has no manifest ({mpath.name}); export it with `edgekit export`, or run "
                         f"it as a third-party file")
    try:
        manifest = Manifest.from_dict(json.loads(mpath.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"manifest {mpath} is not valid JSON ({e}); re-export the model") from None
    if verify:
        actual = sha256_file(path)
        if actual != manifest.file_sha256:
            raise ValueError(f"{path} does not match its manifest (sha256 {actual[:12]}… vs "
                             f"{manifest.file_sha256[:12]}…): the file is truncated or corrupted; re-export it")
    return Artifact(path, manifest)
