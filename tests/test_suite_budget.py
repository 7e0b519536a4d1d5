"""The suite's own time budget (tests/conftest.py), checked on a throwaway suite run by pytester: a
fast-tier test over its budget fails naming the budget and the fix, a slow-marked one of the same
length passes, and the run prints its wall time."""
from pathlib import Path

pytest_plugins = ["pytester"]

INNER = '''
import time
import pytest

def test_quick():
    pass

def test_too_long_for_the_fast_tier():
    time.sleep(0.6)

@pytest.mark.slow
def test_long_but_marked_slow():
    time.sleep(0.6)
'''


def test_a_fast_test_over_budget_fails_and_a_slow_one_does_not(pytester, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TEST_FAST_BUDGET_S", "0.3")
    monkeypatch.setenv("EDGEKIT_TEST_SLOW_BUDGET_S", "5")
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: expensive\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_too_long_for_the_fast_tier took *s (set-up *s), over the 0.3 s budget of "
                                 "a fast-tier test: mark it @pytest.mark.slow*", "suite wall time: * s (budget 900 s*"])
