"""Deterministic, library-independent tensor values: the same numbers from any numpy on any machine.

The timm fixtures (``tests/data/timm``) were made with these values loaded into timm's networks in
an environment that has timm; the tests load the same values into edgekit's networks and compare
logits. Integer hashing (exact in uint64 arithmetic) instead of a random generator, whose streams
may change between library versions.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uniform(n: int, seed: int) -> np.ndarray:
    """``n`` float64 values in [-1, 1) from ``seed`` (splitmix64 of the index)."""
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(1_000_003)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 52) - 1.0


def tensor_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values for a state-dict entry, scaled by its role so a deep network's activations
    stay finite and non-trivial: fan-in scaling for weights, BN statistics near identity."""
    n = int(np.prod(shape)) if shape else 1
    u = uniform(n, seed).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = 1.0 + 0.5 * np.abs(u)
    elif leaf == "running_mean":
        v = 0.1 * u
    elif leaf == "bias":
        v = 0.1 * u
    elif leaf == "weight" and len(shape) == 1:  # a norm's scale
        v = 1.0 + 0.2 * u
    else:  # conv / linear weights: uniform with variance 1 / fan_in (x sqrt(3) for the uniform's spread)
        fan_in = n // shape[0] if shape else 1
        v = u * np.sqrt(3.0 / max(fan_in, 1))
    return v.astype(np.float32)


def state(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Values for every entry of a state dict but ``num_batches_tracked``; each entry's seed is its
    index in sorted key order (the order published checkpoints store their keys in)."""
    return {k: tensor_values(k, tuple(shapes[k]), i) for i, k in enumerate(sorted(shapes))
            if not k.endswith("num_batches_tracked")}


def image(shape: tuple[int, ...], seed: int = 12345) -> np.ndarray:
    return uniform(int(np.prod(shape)), seed).reshape(shape).astype(np.float32)
