"""The latency lookup table: a JSON file, validated on load, refused when it was measured elsewhere.

A LUT holds, for one device fingerprint, format, precision and thread count, the latency in ms of
every block signature of a search space (stem and head included), the whole networks measured to
fit an overhead model, and that model. Files are written atomically.

>>> lut = Lut(space={"name": "fbnet-v1"}, device={"device": "local"}, format="onnx", precision="fp32",
...           threads=1, entries={"stem:k3:relu|in=1x32x32|out=8|s=2": 0.01})
>>> Lut.from_json(lut.to_json()) == lut
True
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .._checks import check_count
from ..exporters.artifact import atomic_write_bytes

__all__ = ["Lut", "LutError", "LutMismatchError", "load_lut", "save_lut", "FORMATS", "PRECISIONS",
           "SCHEMA", "SCHEMA_VERSION"]

SCHEMA = "edgekit-lut"
SCHEMA_VERSION = 1
FORMATS = ("onnx", "tflite", "torch")
PRECISIONS = ("fp32", "int8", "int8-weights", "mixed")
UNIT = "ms"
STATISTICS = ("min", "median")  # what one measurement's figure is: its fastest timed run, its median


class LutError(ValueError):
    """A LUT file that cannot be read or is not a valid LUT."""


class LutMismatchError(LutError):
    """A valid LUT measured on another device / format / precision / thread count than asked for."""


@dataclass(frozen=True)
class Lut:
    """One latency table. ``entries`` maps a canonical block signature key to its latency in ms;
    ``networks`` lists whole networks measured end to end (``{"choices": [...], "ms": x}``);
    ``overhead`` is the fitted model ``measured ~ a_ms + b * sum`` (or None)."""

    space: Mapping[str, Any]
    device: Mapping[str, Any]
    format: str
    precision: str
    threads: int
    entries: Mapping[str, float] = field(default_factory=dict)
    networks: tuple[Mapping[str, Any], ...] = ()
    overhead: Mapping[str, Any] | None = None
    statistic: str = "median"
    unit: str = UNIT
    notes: tuple[str, ...] = ()
    block_model: Mapping[str, Any] | None = None  # fbnet-v2: latency against channels, fitted on the entries
    junctions: Mapping[str, Any] | None = None  # chains measured whole and the junction model fitted on them

    def __post_init__(self):
        object.__setattr__(self, "entries", dict(self.entries))
        object.__setattr__(self, "networks", tuple(dict(n) for n in self.networks))
        object.__setattr__(self, "notes", tuple(self.notes))
        _check_header(self)
        _check_entries(self.entries)
        _check_networks(self.networks)
        if self.overhead is not None:
            _check_overhead(self.overhead)
        if self.block_model is not None and not isinstance(self.block_model, Mapping):
            raise LutError(f"LUT block_model must be an object, not {type(self.block_model).__name__}")
        if self.junctions is not None:
            _check_junctions(self.junctions)

    def replace(self, **changes: Any) -> "Lut":
        return dataclasses.replace(self, **changes)

    def adopting(self, fingerprint: Mapping[str, Any] | None) -> "Lut":
        """This LUT with the fields of a device fingerprint its header lacks (a newer agent reports
        more, e.g. the cache sizes; the fields it has are compared on every measurement, never
        changed)."""
        new = {k: v for k, v in (fingerprint or {}).items() if k not in self.device and v is not None}
        return self if not new else self.replace(device={**self.device, **new})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "unit": self.unit, "statistic": self.statistic,
                "space": dict(self.space), "device": dict(self.device), "format": self.format,
                "precision": self.precision, "threads": self.threads,
                "entries": dict(sorted(self.entries.items())), "networks": [dict(n) for n in self.networks],
                "overhead": None if self.overhead is None else dict(self.overhead), "notes": list(self.notes),
                **({} if self.block_model is None else {"block_model": dict(self.block_model)}),
                **({} if self.junctions is None else {"junctions": dict(self.junctions)})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: Any) -> "Lut":
        if not isinstance(d, Mapping):
            raise LutError(f"a LUT must be a JSON object, not {type(d).__name__}")
        d = dict(d)
        if d.pop("schema", None) != SCHEMA:
            raise LutError(f"not an edgekit LUT (no \"schema\": \"{SCHEMA}\")")
        version = d.pop("schema_version", None)
        if version != SCHEMA_VERSION:
            raise LutError(f"LUT schema_version {version!r} is not supported (this edgekit reads {SCHEMA_VERSION}); "
                           f"rebuild it with `edgekit lut build`")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise LutError(f"LUT has unknown field(s) {unknown}; valid fields: {sorted(names)}")
        missing = sorted({"space", "device", "format", "precision", "threads", "entries"} - set(d))
        if missing:
            raise LutError(f"LUT lacks field(s) {missing}")
        d["networks"] = tuple(d.get("networks") or ())
        d["notes"] = tuple(d.get("notes") or ())
        try:
            return cls(**d)
        except LutError:
            raise
        except (TypeError, ValueError) as e:
            raise LutError(str(e)) from None

    @classmethod
    def from_json(cls, text: str) -> "Lut":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LutError(f"LUT JSON does not parse ({e})") from None
        return cls.from_dict(data)

    def check_compatible(self, *, device: Mapping[str, Any] | str | None = None, format: str | None = None,
                         precision: str | None = None, threads: int | None = None,
                         statistic: str | None = None) -> None:
        """Raise :class:`LutMismatchError` naming every stated expectation this LUT does not meet.
        ``device`` is a fingerprint (every key given must match) or an address string (the LUT's
        device, or one of its ``devices`` when several boards of a kind measured it); ``statistic``
        is what one measurement's figure is (``min``, ``median``)."""
        problems = []
        for label, want, have in (("format", format, self.format), ("precision", precision, self.precision),
                                  ("threads", threads, self.threads), ("statistic", statistic, self.statistic)):
            if want is not None and want != have:
                problems.append(f"{label} is {have!r}, expected {want!r}")
        if isinstance(device, str) and device in self.device.get("devices", ()):
            device = None  # one of the boards of a kind the LUT was measured on
        if device is not None:
            want_fp = {"device": device} if isinstance(device, str) else dict(device)
            for key, value in want_fp.items():
                if self.device.get(key) != value:
                    problems.append(f"device {key} is {self.device.get(key)!r}, expected {value!r}")
        if problems:
            raise LutMismatchError("LUT was measured elsewhere: " + "; ".join(problems) +
                                   ". Build a LUT for this target with `edgekit lut build` (latencies do not "
                                   "transfer between devices, formats, precisions, thread counts or statistics)")


def _check_header(lut: Lut) -> None:
    if lut.unit != UNIT:
        raise LutError(f"LUT unit {lut.unit!r} must be {UNIT!r}")
    if lut.format not in FORMATS:
        raise LutError(f"LUT format {lut.format!r} must be one of {FORMATS}")
    if lut.precision not in PRECISIONS:
        raise LutError(f"LUT precision {lut.precision!r} must be one of {PRECISIONS}")
    check_count("LUT threads", lut.threads, error=LutError)
    if not isinstance(lut.space, Mapping) or not isinstance(lut.space.get("name"), str):
        raise LutError("LUT space must be an object with the space's \"name\" and knobs")
    if not isinstance(lut.device, Mapping) or not lut.device:
        raise LutError("LUT device must be a non-empty fingerprint object (an absolute time means nothing "
                       "without the device it was measured on)")
    if not isinstance(lut.entries, Mapping):
        raise LutError("LUT entries must be an object {signature: ms}")
    if lut.statistic not in STATISTICS:
        raise LutError(f"LUT statistic {lut.statistic!r} must be one of {STATISTICS}")


def _finite_ms(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def _check_entries(entries: Mapping[str, Any]) -> None:
    for key, value in entries.items():
        if not isinstance(key, str) or "|in=" not in key:
            raise LutError(f"LUT entry key {key!r} is not a block signature (type:params|in=CxHxW|out=..)")
        if not _finite_ms(value):
            raise LutError(f"LUT entry {key!r} has latency {value!r}; it must be a finite number of ms >= 0")


def _check_networks(networks: tuple[Mapping[str, Any], ...]) -> None:
    for i, n in enumerate(networks):
        if not isinstance(n.get("choices"), list) or not _finite_ms(n.get("ms")):
            raise LutError(f"LUT networks[{i}] must be {{\"choices\": [...], \"ms\": x}}, got {dict(n)!r}")


def _check_overhead(o: Mapping[str, Any]) -> None:
    if o.get("model") != "linear" or not all(isinstance(o.get(k), (int, float)) and math.isfinite(o[k])
                                             for k in ("a_ms", "b")):
        raise LutError(f"LUT overhead {dict(o)!r} must be {{\"model\": \"linear\", \"a_ms\": a, \"b\": b, ...}}")


def _check_junctions(j: Any) -> None:
    if not isinstance(j, Mapping) or not isinstance(j.get("chains"), list):
        raise LutError("LUT junctions must be {\"chains\": [{\"units\": [key, ...], \"ms\": x}, ...], \"model\": ...}")
    for i, c in enumerate(j["chains"]):
        if (not isinstance(c, Mapping) or not isinstance(c.get("units"), list) or len(c["units"]) < 2
                or not all(isinstance(k, str) for k in c["units"]) or not _finite_ms(c.get("ms"))):
            raise LutError(f"LUT junctions.chains[{i}] must be {{\"units\": [two or more keys], \"ms\": x}}, "
                           f"got {c!r}")
    m = j.get("model")
    if m is not None and not (isinstance(m, Mapping) and all(
            isinstance(m.get(k), (int, float)) and math.isfinite(m[k]) for k in ("a_ms", "b_ms_per_kib"))):
        raise LutError(f"LUT junctions.model {m!r} must hold finite a_ms and b_ms_per_kib")


def load_lut(path: str | os.PathLike, *, device: Mapping[str, Any] | str | None = None, format: str | None = None,
             precision: str | None = None, threads: int | None = None, statistic: str | None = None) -> Lut:
    """Read and validate a LUT file; with any expectation given, refuse a LUT that does not meet it.

    >>> lut = load_lut("lut.json", format="tflite", precision="int8", threads=1)  # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LutError(f"LUT file {path} does not exist; build one with `edgekit lut build`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LutError(f"LUT file {path} cannot be read ({e})") from None
    try:
        lut = Lut.from_json(text)
    except LutError as e:
        raise type(e)(f"{path}: {e}; the file is corrupt or not a LUT (rebuild or resume it with "
                      f"`edgekit lut build`)") from None
    lut.check_compatible(device=device, format=format, precision=precision, threads=threads, statistic=statistic)
    return lut


def save_lut(lut: Lut, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename), so an interrupted build never leaves half a LUT."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output directory {path.parent} does not exist; create it first")
    atomic_write_bytes(path, lut.to_json().encode())
    return path
