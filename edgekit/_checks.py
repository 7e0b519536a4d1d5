"""Argument checks shared across edgekit: one definition of "a count", so that ``True`` (an int to
Python) or ``2.0`` is refused everywhere alike."""
from __future__ import annotations

from typing import Any

__all__ = ["check_count", "is_count"]


def is_count(value: Any, minimum: int = 1) -> bool:
    """``value`` is an int, not a bool, and at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_count(label: str, value: Any, *, minimum: int = 1, hint: str = "", error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``label`` unless :func:`is_count`; ``hint`` is appended to the message
    (e.g. ``", e.g. 1000"``)."""
    if not is_count(value, minimum):
        raise error(f"{label} {value!r} must be an int >= {minimum}{hint}")
