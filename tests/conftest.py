"""Shared fixtures, the export cache every module reads, and the suite's time budget.

Budget: a test without the ``slow`` mark may take ``FAST_BUDGET_S`` (its set-up included, so a
module fixture that exports a network counts against the first test that needs it), any test
``SLOW_BUDGET_S``; over that it fails and says which mark or fixture to reach for. The suite prints
its own wall time against the budget of ``make test`` / ``make test-fast`` at the end.
"""
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker: torch's own threads would fight the other
    import torch
    torch.set_num_threads(1)

# Budgets with room for this shared 2-core VM's slow hours (the same test has run 1.7x slower from
# one hour to the next here): the largest fast-tier set-up measured 24-36 s, the slowest test 50-88 s.
FAST_BUDGET_S = float(os.environ.get("EDGEKIT_TEST_FAST_BUDGET_S", 60))
SLOW_BUDGET_S = float(os.environ.get("EDGEKIT_TEST_SLOW_BUDGET_S", 300))
SUITE_BUDGET_S = {"all": 15 * 60, "fast": 90}
_START = time.monotonic()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh EDGEKIT_HOME (results store) per test."""
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def edgekit_cli(capsys):
    """``edgekit_cli(*args)`` runs the command through the same ``main`` as the console script, in this
    process (no second torch import): a CompletedProcess with its exit code, stdout and stderr."""
    import subprocess
    from edgekit import cli

    def run(*args):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["edgekit", *map(str, args)], code, out, err)
    return run


# ---- exports made once per run, shared across modules and pytest-xdist workers -------------------

@pytest.fixture(scope="session")
def shared_root(tmp_path_factory, request) -> Path:
    """One folder for the whole run: under xdist every worker has its own base temp, their parent is
    common to all of them."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if hasattr(request.config, "workerinput") else base) / "shared-exports"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def exported(shared_root):
    """``exported(key, build) -> folder``: ``build(folder)`` runs once per distinct ``key`` (plain
    data naming everything the files depend on: model, input size, settings) in the whole run, under
    a lock, so two workers asking for the same files wait for one export instead of making two."""
    from filelock import FileLock

    def get(key: dict, build) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        folder = shared_root / digest
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".complete").exists():
                folder.mkdir(exist_ok=True)
                build(folder)
                (folder / ".complete").write_text(json.dumps(key, sort_keys=True, default=str))
        return folder
    return get


@pytest.fixture(scope="session")
def artifacts(exported):
    """The four files of the small device-test model (ghostnet_0_5, 32x32, 1 channel), exported once
    for every module that runs, compares or inspects them."""
    from test_devices import SMALL_KEY, export_small, small_files
    return small_files(exported(SMALL_KEY, export_small))


# ---- the time budget -------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup":
        item.stash[_SETUP_S] = report.duration
        return
    if report.when != "call" or not report.passed:
        return
    took = item.stash.get(_SETUP_S, 0.0) + report.duration
    slow = item.get_closest_marker("slow") is not None
    budget = SLOW_BUDGET_S if slow else FAST_BUDGET_S
    if took > budget:
        report.outcome = "failed"
        hint = ("share its set-up (a session fixture, `exported`), shrink the input, or split it"
                if slow else "mark it @pytest.mark.slow, or share its set-up through a session fixture")
        report.longrepr = (f"{item.nodeid} took {took:.1f} s (set-up {item.stash.get(_SETUP_S, 0.0):.1f} s), over "
                           f"the {budget:g} s budget of a {'slow' if slow else 'fast-tier'} test: {hint}")


_SETUP_S = pytest.StashKey[float]()

# The modules that take longest, longest first (test-seconds of a whole run, rounded): pytest-xdist
# hands modules to its two workers in collection order, so these start first and the many short
# modules fill in around them. Alphabetical order started the longest (test_zoo_onnx, about a
# third of the suite) last, on one worker, while the other sat idle. The LUT and board modules,
# which pin their timed runs to one core, come early so that they run beside the two export
# sweeps, which pin nothing.
LONGEST_FIRST = ("test_zoo_onnx.py", "test_export_tflite.py", "test_lut.py", "test_boards.py", "test_models.py",
                 "test_export_onnx.py", "test_lut_ray.py", "test_timm.py", "test_export.py", "test_devices.py",
                 "test_devices_layers.py", "test_sensitivity.py", "test_nas.py", "test_devices_ssh.py")


def pytest_configure(config):
    # pytest-xdist 3.6 and later hand out loadfile's modules by their number of tests, most first,
    # unless told not to: that order, not LONGEST_FIRST, was the one used (test_models, with the most
    # tests, first; the ONNX sweep fifth; test_lut_ray and test_export, a minute each in a few tests,
    # among the last)
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise kept


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller prints it
        return
    tier = "fast" if (config.getoption("markexpr") or "").strip() == "not slow" else "all"
    wall = time.monotonic() - _START
    terminalreporter.write_line(f"suite wall time: {wall:.0f} s (budget {SUITE_BUDGET_S[tier]} s for "
                                f"{'make test-fast' if tier == 'fast' else 'make test'}; per test: "
                                f"{FAST_BUDGET_S:g} s fast tier, {SLOW_BUDGET_S:g} s slow)")
