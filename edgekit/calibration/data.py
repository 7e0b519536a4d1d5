"""Calibration and validation data: loading real images and the one preprocessing everyone applies.

Sources (``load_dataset``), all read from local files; nothing is downloaded:

* ``"fashion-mnist"`` / ``"fashion-mnist:N"`` — the Debian package ``dataset-fashion-mnist``
  (gzip'd IDX files under ``/usr/share/datasets/fashion-mnist``, or ``$EDGEKIT_FASHION_MNIST_DIR``).
* a directory of IDX files (plain or ``.gz``; ``train-``/``t10k-`` ``images-idx3-ubyte`` and
  ``labels-idx1-ubyte``).
* a directory of image folders, one sub-folder per class (PNG/JPEG/PGM/..., read with Pillow). If it
  has ``train/`` and ``test/`` sub-folders, ``split`` picks one; otherwise the whole directory is used.
* a ``.npy`` file of images (N, H, W) or (N, H, W, C), uint8 or float in [0, 1]; no labels.

``preprocess`` is the single definition of "stored image -> model input" (resize, channels, [0, 1],
mean/std, layout). Calibration, ``edgekit validate`` and the device agent must all apply exactly
this; it is plain numpy (no torch), so the agent can apply it on a device that has only numpy.
"""
from __future__ import annotations

import difflib
import functools
import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..exporters.artifact import RESIZE_MODES, Preprocessing

__all__ = ["Dataset", "FASHION_MNIST_CLASSES", "SyntheticDataWarning", "load_dataset", "preprocess",
           "preprocessing_for", "resize", "crop_canvas", "calibration_batch", "synthetic_batch", "read_idx",
           "fashion_mnist_dir"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
LAYOUTS = ("NCHW", "NHWC")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
# ITU-R BT.601 luma weights: the ones Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class SyntheticDataWarning(UserWarning):
    """Int8 ranges are being computed from random data, not from real images."""


@dataclass(frozen=True)
class Dataset:
    """Images (and labels when the source has them) as stored: nothing resized or normalised yet.

    ``images`` is (N, H, W) for grey or (N, H, W, 3) for RGB, uint8 (0..255) or float32 in [0, 1]
    (only a float ``.npy`` gives float). Arrays loaded from files are read-only views; copy to edit.

    >>> ds = load_dataset("fashion-mnist:100")
    >>> ds.images.shape, ds.labels[:3].tolist(), ds.class_names[9]
    ((100, 28, 28), [9, 2, 1], 'Ankle boot')
    """

    name: str
    images: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        _check_image_array(self.images, f"dataset {self.name!r}")
        if self.labels is not None:
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"dataset {self.name!r}: labels shape {self.labels.shape} must be "
                                 f"({len(self.images)},), one per image")
            if self.labels.dtype != np.int64:
                raise ValueError(f"dataset {self.name!r}: labels dtype {self.labels.dtype} must be int64")
            if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
                raise ValueError(f"dataset {self.name!r}: labels span {self.labels.min()}..{self.labels.max()} "
                                 f"but there are {len(self.class_names)} class names")

    def __len__(self) -> int:
        return len(self.images)


# ---- loading -----------------------------------------------------------------------------------

def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST IDX files are: ``$EDGEKIT_FASHION_MNIST_DIR`` or the Debian package's."""
    return Path(os.environ.get("EDGEKIT_FASHION_MNIST_DIR") or FASHION_MNIST_DEFAULT_DIR)


def load_dataset(source: str | os.PathLike, *, split: str = "test", limit: int | None = None,
                 fit: Preprocessing | None = None) -> Dataset:
    """Load images (and labels) from ``"fashion-mnist[:N]"``, an IDX directory, a directory of class
    folders or a ``.npy`` file. ``limit`` (and ``:N``) keep the first images; with both, the smaller.
    Images in class folders may differ in size when ``fit`` (the model's preprocessing) is given:
    each is then resized, keeping its aspect, to cover ``crop_canvas(fit)`` and centre-cropped to it
    as it is read, so ``preprocess`` finds them all one size.

    >>> ds = load_dataset("fashion-mnist", split="test")
    >>> len(ds), ds.images.dtype
    (10000, dtype('uint8'))
    """
    _choice("split", split, SPLITS)
    limit = _check_count("limit", limit)
    text = os.fspath(source)
    if text == "fashion-mnist" or text.startswith("fashion-mnist:"):
        n = _check_count("fashion-mnist:N", _parse_suffix_count(text)) if ":" in text else None
        ds = _load_fashion_mnist(split)
        return _first(ds, _min_limit(limit, n))
    path = Path(text)
    if text.endswith(".npy"):
        return _first(_load_npy(path), limit)
    if path.is_dir():
        if _find_idx(path, split, "images") is not None:
            return _first(_load_idx_dir(path, split, name=f"{path}/{split}"), limit)
        return _load_image_folders(path, split, limit, fit)
    close = difflib.get_close_matches(text, ["fashion-mnist"], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"data source {text!r} is neither 'fashion-mnist[:N]', an existing directory (IDX files or "
                     f"one sub-folder of images per class) nor a .npy file{hint}")


def _parse_suffix_count(text: str) -> int:
    tail = text.split(":", 1)[1]
    try:
        return int(tail)
    except ValueError:
        raise ValueError(f"data source {text!r}: the part after ':' must be a number of images, "
                         f"e.g. 'fashion-mnist:500'") from None


def _load_fashion_mnist(split: str) -> Dataset:
    root = fashion_mnist_dir()
    if _find_idx(root, split, "images") is None:
        env = os.environ.get("EDGEKIT_FASHION_MNIST_DIR")
        where = f"$EDGEKIT_FASHION_MNIST_DIR={env}" if env else root
        raise ValueError(f"Fashion-MNIST ({split}) not found in {where}: install it with "
                         f"`apt-get install dataset-fashion-mnist`, set EDGEKIT_FASHION_MNIST_DIR, or pass a "
                         f"directory of IDX files or image folders instead")
    ds = _load_idx_dir(root, split, name=f"fashion-mnist/{split}")
    if ds.labels is None:
        raise ValueError(f"Fashion-MNIST in {root} has no {_IDX_PREFIX[split]} labels file; reinstall "
                         f"`apt-get install --reinstall dataset-fashion-mnist`")
    return Dataset(ds.name, ds.images, ds.labels, FASHION_MNIST_CLASSES)


def _find_idx(root: Path, split: str, kind: str) -> Path | None:
    dims = "idx3" if kind == "images" else "idx1"
    prefix = _IDX_PREFIX[split]
    for sep in ("-", "."):
        for gz in (".gz", ""):
            p = root / f"{prefix}-{kind}{sep}{dims}-ubyte{gz}"
            if p.is_file():
                return p
    return None


def _load_idx_dir(root: Path, split: str, *, name: str) -> Dataset:
    images = read_idx(_find_idx(root, split, "images"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{_find_idx(root, split, 'images')}: images must be uint8 (N, H, W), "
                         f"got {images.dtype} {images.shape}")
    label_path = _find_idx(root, split, "labels")
    if label_path is None:
        return Dataset(name, images, None, ())
    labels = read_idx(label_path)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{label_path}: expected {len(images)} labels (one per image), got shape {labels.shape}")
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return Dataset(name, images, labels, tuple(str(i) for i in range(n_classes)))


_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (plain or gzip'd) strictly: magic number, dimensions and exact byte length.
    The result is read-only and cached per (path, size, mtime).

    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
    (10000,)
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"IDX file {p} does not exist")
    st = p.stat()
    return _read_idx_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    data = _read_bytes(Path(path))
    if len(data) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, not even the 4-byte magic number")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(f"{path} is not an IDX file: magic number {data[:4].hex()} must be 0000 + a type code "
                         f"({', '.join(f'{c:02x}' for c in _IDX_DTYPES)}) + 1..4 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(f"IDX file {path} is {what}: the header declares {'x'.join(map(str, dims))} {dtype.name} "
                         f"= {expected} bytes, the file has {len(data)}; re-copy or reinstall it")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    arr.flags.writeable = False
    return arr


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if not gzipped:
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise ValueError(f"IDX file {path} is a corrupt or truncated gzip file ({e}); re-copy or reinstall it") \
            from None


def _load_npy(path: Path) -> Dataset:
    if not path.is_file():
        raise ValueError(f".npy file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            raise ValueError(f"{path} is not a numpy array file (no .npy header); save images with np.save")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=None)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path} holds {type(arr).__name__}, not one array; save images with np.save")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]  # (N, H, W, 1) -> (N, H, W)
    if np.issubdtype(arr.dtype, np.floating):
        _check_finite(arr, f"{path}")
        arr = arr.astype(np.float32, copy=False)
    _check_image_array(arr, str(path))
    arr.flags.writeable = False
    return Dataset(str(path), arr, None, ())


def _load_image_folders(root: Path, split: str, limit: int | None, fit: Preprocessing | None = None) -> Dataset:
    if (root / split).is_dir():
        root = root / split
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, ci) for ci, c in enumerate(classes)
             for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not files:
        raise ValueError(f"directory {root} holds no IDX files ({_IDX_PREFIX[split]}-images-idx3-ubyte[.gz]) and no "
                         f"images in class sub-folders ({root}/<class>/<image>{IMAGE_SUFFIXES[0]}); "
                         f"image types read: {', '.join(IMAGE_SUFFIXES)}")
    files = files[:limit] if limit is not None else files
    images = [_read_image(f) for f, _ in files]
    sizes = {im.shape[:2] for im in images}
    if fit is not None and (len(sizes) > 1 or sizes != {crop_canvas(fit)}):
        colour = any(im.ndim == 3 for im in images)
        canvas = crop_canvas(fit)
        images = [_cover(_to_unit_nchw((np.repeat(im[..., None], 3, -1) if colour and im.ndim == 2 else im)[None]),
                         canvas, fit.resize)[0].transpose(1, 2, 0) for im in images]  # (H, W, C) in [0, 1]
        images = [im[..., 0] if im.shape[-1] == 1 else im for im in images]
        sizes = {canvas}
    if len(sizes) > 1:
        first: dict[tuple[int, ...], Path] = {}
        for (f, _), im in zip(files, images):
            first.setdefault(im.shape[:2], f)
        listing = ", ".join(f"{h}x{w} ({first[(h, w)].name})" for h, w in sorted(sizes)[:4])
        raise ValueError(f"images in {root} have different sizes: {listing}; resize them to one size first, or "
                         f"load them for a model (its preprocessing resizes and centre-crops each)")
    if any(im.ndim == 3 for im in images):  # any colour image: the whole set becomes RGB
        images = [np.repeat(im[..., None], 3, axis=-1) if im.ndim == 2 else im for im in images]
    arr = np.stack(images)
    arr.flags.writeable = False
    labels = np.array([ci for _, ci in files], dtype=np.int64)
    labels.flags.writeable = False
    return Dataset(str(root), arr, labels, tuple(classes))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("1", "L", "LA"):
                return np.asarray(im.convert("L"))
            if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                return np.asarray(im.convert("RGB"))  # alpha is dropped
            raise ValueError(f"image {path} has mode {mode!r} (16-bit or float); save it as 8-bit grey or RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {path} cannot be read ({e})") from None


def _first(ds: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    labels = None if ds.labels is None else ds.labels[:n]
    return Dataset(ds.name, ds.images[:n], labels, ds.class_names)


def _min_limit(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


# ---- preprocessing -----------------------------------------------------------------------------

def preprocessing_for(model_default_cfg: Mapping[str, Any]) -> Preprocessing:
    """The ``Preprocessing`` a zoo model expects, from its ``default_cfg`` (``input_size`` [C, H, W],
    ``mean``, ``std``). A one-channel model gets ``channel_order="L"`` (RGB data is converted to
    luminance); three channels get ``"RGB"``.

    >>> preprocessing_for({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.25]}).channel_order
    'L'
    """
    missing = [k for k in ("input_size", "mean", "std") if k not in model_default_cfg]
    if missing:
        raise ValueError(f"model default_cfg lacks {missing}; it needs input_size [C, H, W], mean and std")
    size = list(model_default_cfg["input_size"])
    if len(size) != 3:
        raise ValueError(f"model default_cfg input_size {size} must be [C, H, W]")
    c, h, w = (int(v) for v in size)
    # a checkpoint's own evaluation transform (timm's names): its crop share and interpolation, the
    # latter antialiased as the image libraries it was measured with resize
    interpolation = model_default_cfg.get("interpolation")
    resize = {"bicubic": "bicubic-aa", "bilinear": "bilinear-aa"}.get(interpolation, "bilinear")
    return Preprocessing(resolution=(h, w), channels=c, mean=tuple(model_default_cfg["mean"]),
                         std=tuple(model_default_cfg["std"]), channel_order="L" if c == 1 else "RGB",
                         resize=resize, crop_pct=float(model_default_cfg.get("crop_pct", 1.0)))


def preprocess(images: np.ndarray, pre: Preprocessing, *, layout: str = "NCHW") -> np.ndarray:
    """Stored images -> float32 model input, in this order:

    1. to float32 in [0, 1] (uint8 / 255; float images must already be in [0, 1]);
    2. channels: grey -> 3 channels by replication when ``pre.channels == 3``; RGB -> 1 channel only
       when ``pre.channel_order == "L"`` (BT.601 luma 0.299 R + 0.587 G + 0.114 B, as Pillow's
       ``convert("L")``), refused otherwise; ``"BGR"`` reverses RGB channels (input is taken as RGB);
    3. resize to ``pre.resolution``: ``"bilinear"`` is numpy code that reproduces
       ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``
       (half-pixel centres, edge clamp, no anti-aliasing); ``"nearest"`` reproduces ``mode="nearest"``.
       With ``pre.crop_pct`` below 1 the image is instead resized, keeping its aspect, to just cover
       ``resolution / crop_pct`` and the centre ``resolution`` cropped out (the evaluation crop of
       ImageNet models);
    4. ``(x - mean) / std`` per channel;
    5. ``layout`` ``"NCHW"`` or ``"NHWC"``.

    ``images`` is a batch: (N, H, W) grey, or (N, H, W, C) with C = 1 or 3. Pure numpy, deterministic.

    >>> pre = Preprocessing(resolution=(32, 32), channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> preprocess(np.zeros((2, 28, 28), np.uint8), pre).shape
    (2, 3, 32, 32)
    """
    _choice("layout", layout, LAYOUTS)
    images = np.asarray(images)
    _check_image_array(images, "images")
    if np.issubdtype(images.dtype, np.floating):
        _check_finite(images, "images")
    x = _to_unit_nchw(images)                          # (N, C_in, H, W) float32 in [0, 1]
    x = _convert_channels(x, pre)                      # (N, C, H, W)
    x = _to_resolution(x, pre)                         # (N, C, H', W')
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    x = (x - mean) / std
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_unit_nchw(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        x = images.astype(np.float32) / np.float32(255)
    else:
        x = images.astype(np.float32)
        lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
        if lo < 0 or hi > 1:
            raise ValueError(f"float images must be scaled to [0, 1], these span {lo:g}..{hi:g}; if they are "
                             f"0..255 pixel values, pass them as uint8")
    if x.ndim == 3:
        return x[:, None]                              # (N, H, W) -> (N, 1, H, W)
    return x.transpose(0, 3, 1, 2)                     # (N, H, W, C) -> (N, C, H, W)


def _convert_channels(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    c_in = x.shape[1]
    if pre.channel_order == "L" and pre.channels != 1:
        raise ValueError(f"preprocessing channel_order 'L' means one grey channel, but channels is {pre.channels}; "
                         f"use channel_order 'RGB' for a 3-channel model")
    if c_in == pre.channels:
        return x[:, ::-1] if pre.channel_order == "BGR" else x
    if c_in == 1 and pre.channels == 3:
        return np.repeat(x, 3, axis=1)
    if c_in == 3 and pre.channels == 1:
        if pre.channel_order != "L":
            raise ValueError("the model takes 1 channel but the images are RGB; set channel_order='L' to convert "
                             "them to BT.601 luminance, or pass grey images")
        return np.einsum("nchw,c->nhw", x, _LUMA)[:, None]
    raise ValueError(f"cannot turn {c_in}-channel images into the model's {pre.channels} channels; "
                     f"pass grey (N, H, W) or RGB (N, H, W, 3) images")


def crop_canvas(pre: Preprocessing) -> tuple[int, int]:
    """The size an image is brought to before its centre crop: ``resolution / crop_pct``."""
    h, w = pre.resolution
    return (int(h / pre.crop_pct), int(w / pre.crop_pct)) if pre.crop_pct < 1 else (h, w)


def _centre(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre ``size`` of (N, C, H, W), no larger than it."""
    top, left = (x.shape[2] - size[0]) // 2, (x.shape[3] - size[1]) // 2
    return x[:, :, top:top + size[0], left:left + size[1]]


def _cover(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize (N, C, H, W) keeping the aspect ratio so it just covers ``size``, then crop the centre."""
    h, w = x.shape[2:]
    scale = max(size[0] / h, size[1] / w)
    return _centre(_unit_resize(x, (max(size[0], round(h * scale)), max(size[1], round(w * scale))), mode), size)


def _unit_resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``resize`` of images in [0, 1], kept in [0, 1] (a bicubic filter overshoots at edges; image
    libraries clip it to the pixel range)."""
    y = resize(x, size, mode=mode)
    return np.clip(y, 0.0, 1.0, out=y) if mode in _FILTERS else y


def _to_resolution(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    if pre.crop_pct >= 1:
        return _unit_resize(x, pre.resolution, pre.resize)
    return _centre(_cover(x, crop_canvas(pre), pre.resize), pre.resolution)  # the crop keeps crop_pct of it


def resize(x: np.ndarray, size: tuple[int, int], *, mode: str = "bilinear") -> np.ndarray:
    """Resize an (N, C, H, W) float array to ``size`` (H', W') exactly as
    ``torch.nn.functional.interpolate(x, size, mode=mode, align_corners=False)`` does (bilinear without
    anti-aliasing, or nearest), one separable pass per axis.

    >>> resize(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2), (4, 4))[0, 0, 0].tolist()
    [0.0, 0.25, 0.75, 1.0]
    """
    _choice("resize mode", mode, RESIZE_MODES)
    x = _resize_axis(x, int(size[1]), axis=3, mode=mode)
    return _resize_axis(x, int(size[0]), axis=2, mode=mode)


def _cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, (((t - 5) * t + 8) * t - 4) * a, 0.0))


_FILTERS = {"bicubic-aa": (_cubic, 2.0), "bilinear-aa": (lambda t: np.maximum(1.0 - np.abs(t), 0.0), 1.0)}


def _filter_weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """(n_out, n_in) weights of a separable resampling filter: each output pixel a normalised,
    filter-weighted sum of the input pixels within its support, the support widened by the
    scale when shrinking (Pillow's resampling)."""
    fn, support = _FILTERS[mode]
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale  # output pixel centres in input coordinates
    src = np.arange(n_in) + 0.5
    w = fn((src[None, :] - centre[:, None]) / stretch)
    w[np.abs(src[None, :] - centre[:, None]) >= support * stretch] = 0.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize_axis(x: np.ndarray, n_out: int, *, axis: int, mode: str) -> np.ndarray:
    n_in = x.shape[axis]
    if n_out == n_in:
        return x
    if mode in _FILTERS:
        out = np.tensordot(np.moveaxis(x, axis, -1), _filter_weights(n_in, n_out, mode).T, axes=1)
        return np.moveaxis(out, -1, axis).astype(np.float32)
    if mode == "nearest":
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)
        return np.take(x, src, axis=axis)
    # half-pixel centres: src = in/out * (dst + 0.5) - 0.5, clamped at 0, in float32 as torch does
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0.astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = n_out
    lam = lam.reshape(shape)
    return np.take(x, i0, axis=axis) * (np.float32(1) - lam) + np.take(x, i1, axis=axis) * lam


# ---- calibration batches -----------------------------------------------------------------------

def calibration_batch(source: str | os.PathLike | np.ndarray, pre: Preprocessing, *, samples: int, seed: int = 0,
                      layout: str = "NCHW", split: str = "train") -> np.ndarray:
    """A seeded random subset of ``samples`` images from ``source`` (a ``load_dataset`` source, from
    the TRAIN split by default so validation on test stays clean, or an image array), preprocessed.
    The subset is ``np.random.default_rng(seed).choice(N, samples, replace=False)``, sorted.

    >>> pre = Preprocessing(resolution=(32, 32), channels=1, mean=(0.5,), std=(0.5,), channel_order="L")
    >>> calibration_batch("fashion-mnist", pre, samples=8).shape
    (8, 1, 32, 32)
    """
    samples = _check_count("samples", samples)
    if samples is None:
        raise ValueError("calibration samples must be a number >= 1, e.g. samples=256")
    if isinstance(source, np.ndarray):
        images, what = source, "the calibration array"
        _check_image_array(images, what)
        if np.issubdtype(images.dtype, np.floating):
            _check_finite(images, what)
    else:
        ds = load_dataset(source, split=split, fit=pre)
        images, what = ds.images, f"calibration data {ds.name!r}"
    if len(images) == 0:
        raise ValueError(f"{what} holds no images; pass a source with at least {samples}")
    if len(images) < samples:
        raise ValueError(f"{what} has {len(images)} images but {samples} calibration samples were asked for; "
                         f"ask for at most {len(images)} or pass a larger source")
    idx = np.sort(np.random.default_rng(seed).choice(len(images), samples, replace=False))
    return preprocess(images[idx], pre, layout=layout)


def synthetic_batch(pre: Preprocessing, *, samples: int, seed: int = 0, layout: str = "NCHW") -> np.ndarray:
    """Random uint8 images at ``pre.resolution``, preprocessed. Only for an explicit "no data" flag:
    it warns (``SyntheticDataWarning``) because ranges from noise are not ranges from real data, and
    the manifest must record ``Calibration(synthetic=True)``.

    >>> import warnings
    >>> pre = Preprocessing(resolution=(8, 8), channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     synthetic_batch(pre, samples=2, seed=0).shape
    (2, 3, 8, 8)
    """
    samples = _check_count("samples", samples)
    if samples is None:
        raise ValueError("synthetic samples must be a number >= 1")
    warnings.warn("calibrating on SYNTHETIC random images: the int8 ranges are not from real data and accuracy "
                  "may drop; pass --calib fashion-mnist, a directory or a .npy file for real ranges",
                  SyntheticDataWarning, stacklevel=2)
    h, w = pre.resolution
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(samples, h, w, pre.channels), dtype=np.uint8)
    if pre.channels == 1:
        images = images[..., 0]
    return preprocess(images, pre, layout=layout)


# ---- checks ------------------------------------------------------------------------------------

def _check_image_array(images: np.ndarray, what: str) -> None:
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{what} dtype {images.dtype} must be uint8 (0..255) or float in [0, 1]")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        hint = ("; it looks channels-first, transpose it with np.transpose(x, (0, 2, 3, 1))"
                if images.shape[1] in (1, 3) else "; drop alpha with x[..., :3]" if images.shape[-1] == 4 else "")
        raise ValueError(f"{what} has {images.shape[-1]} channels (shape {images.shape}); edgekit takes grey "
                         f"(N, H, W) or RGB (N, H, W, 3) images{hint}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{what} has shape {images.shape} (rank {images.ndim}); it must be a batch of grey "
                         f"(N, H, W) or RGB (N, H, W, 3) images — add a batch axis with x[None] for one image")


def _check_finite(x: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_nan = int(np.isnan(x).sum())
        raise ValueError(f"{what} has {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf), "
                         f"the first at index {first} (image {first[0]}); clean or drop those images")


def _check_count(label: str, n: Any) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{label} {n!r} must be a whole number >= 1")
    return int(n)


def _choice(label: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{label} {value!r} must be one of {choices}{hint}")
