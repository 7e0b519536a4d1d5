"""The `edgekit` command: once as a user runs it (a process of its own), the rest through the same
``main`` in this process, which saves each test the seconds of importing torch again."""
import json
import subprocess
import sys

import pytest

from edgekit.models import list_models


@pytest.fixture
def edgekit(edgekit_cli):
    return edgekit_cli


@pytest.mark.slow  # profiles all 40 variants; the fast tier has their figures (test_models) and the table
def test_models_json_lists_every_variant_with_params_and_macs(edgekit):
    r = edgekit("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["models"]
    assert [row["name"] for row in rows] == list_models()
    for row in rows:
        assert row["params"] > 0 and row["macs"] > 0 and row["family"] and len(row["resolution"]) == 2


def test_models_table(edgekit):
    r = edgekit("models", "ghostnet*")
    assert r.returncode == 0, r.stderr
    assert "ghostnet_1_0" in r.stdout and "5.18M" in r.stdout and "espnet" not in r.stdout


def test_info_prints_config_and_stages(edgekit):
    r = edgekit("info", "efficientnet_b0", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["config"]["input_size"] == [3, 224, 224]
    stages = doc["profile"]["stages"]
    assert len(stages) >= 9 and sum(s["macs"] for s in stages) == doc["profile"]["macs"]
    r = edgekit("info", "ghostnet_1_0", "--resolution", "64", "--in-chans", "1", "--num-classes", "10")
    assert r.returncode == 0, r.stderr
    assert "input 1x64x64" in r.stdout


def test_unknown_model_exits_nonzero_with_suggestions():
    """As a user runs it: the module's entry point, its exit code and its stderr."""
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "info", "efficientnet_b9"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert "unknown model 'efficientnet_b9'" in r.stderr and "efficientnet_b" in r.stderr


def test_invalid_override_exits_nonzero_naming_the_value(edgekit):
    r = edgekit("info", "ghostnet_1_0", "--width", "-1")
    assert r.returncode == 2 and "width=-1.0" in r.stderr
    r = edgekit("info", "ghostnet_1_0", "--resolution", "abc")
    assert r.returncode == 2 and "resolution 'abc'" in r.stderr
