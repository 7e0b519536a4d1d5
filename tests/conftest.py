import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh EDGEKIT_HOME (results store) per test."""
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """The four files of the small device-test model, exported once for every module that reads them
    (modules needing other formats or precisions define their own)."""
    from test_devices import export_small
    return export_small(tmp_path_factory.mktemp("art"))
