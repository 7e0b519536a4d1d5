"""The shared count check: what every int >= N argument of edgekit is held to."""
from __future__ import annotations

import pytest

from edgekit._checks import check_count, is_count
from edgekit.lut.lut import LutError


def test_a_count_is_an_int_not_a_bool_at_least_the_minimum():
    assert is_count(1) and is_count(64, 64) and is_count(0, 0)
    for bad in (0, -3, True, False, 2.0, "3", None):
        assert not is_count(bad), bad
    assert not is_count(63, 64)


def test_check_count_names_the_argument_and_raises_the_given_error():
    check_count("runs", 5)
    with pytest.raises(ValueError, match=r"^accuracy_samples True must be an int >= 1, e\.g\. 1000$"):
        check_count("accuracy_samples", True, hint=", e.g. 1000")
    with pytest.raises(LutError, match=r"^LUT threads 0 must be an int >= 1$"):
        check_count("LUT threads", 0, error=LutError)
    with pytest.raises(ValueError, match=r"^samples 1 must be an int >= 2$"):
        check_count("samples", 1, minimum=2)
