"""`edgekit export` / `validate` end to end on real Fashion-MNIST: four files, their manifests,
parity against PyTorch, and nothing written when anything fails."""
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.exporters.artifact import load_artifact
from edgekit.export import ExportSettings, export
from edgekit.models import create_model
from edgekit.train import TrainConfig, train
from helpers import Tiny, randomise_bn


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("w") / "ghostnet_0_5.pt"
    train("ghostnet_0_5", out=out, config=TrainConfig(epochs=1, limit=2048, test_limit=500, batch_size=64))
    return out


@pytest.mark.slow
def test_export_four_files_then_validate(trained, tmp_path, edgekit_cli):
    r = edgekit_cli("export", "ghostnet_0_5", "--weights", trained, "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    arts = json.loads(r.stdout)["artifacts"]
    assert {(a["format"], a["precision"]) for a in arts} == {(f, p) for f in ("onnx", "tflite") for p in ("fp32", "int8")}
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 8 and all(not n.startswith(".") for n in names), names
    for a in arts:
        art = load_artifact(a["path"])  # sha256 verified
        m = art.manifest
        assert m.model == "ghostnet_0_5" and m.preprocessing.resolution == (32, 32)
        assert m.weights_sha256 and m.weights_file == str(trained.resolve())
        floor = 60 if m.precision == "fp32" else 20
        assert a["parity"]["sqnr_db"] >= floor
        if m.precision == "int8":
            assert m.calibration.dataset == "fashion-mnist" and m.calibration.samples == 256
            assert not m.calibration.synthetic
        if m.format == "tflite":
            assert m.inputs[0].layout == "NHWC" and m.inputs[0].shape == (1, 32, 32, 1)
            if m.precision == "int8":
                assert m.inputs[0].dtype == "int8" and m.inputs[0].scale > 0
    int8 = next(a["path"] for a in arts if a["format"] == "tflite" and a["precision"] == "int8")
    r = edgekit_cli("validate", int8, "--limit", "2000", "--json")  # validate() itself, through the CLI
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["n"] == 2000 and report["precision"] == "int8"
    assert report["torch_top1"] > 0.5  # a briefly trained network, far above the 10 % of guessing
    assert abs(report["drop"]) < 0.03, report


def test_nan_calibration_data_fails_and_writes_nothing(tmp_path):
    bad = np.random.default_rng(0).random((64, 28, 28)).astype(np.float32)
    bad[5, 3, 3] = np.nan
    np.save(tmp_path / "calib.npy", bad)
    out = tmp_path / "out"
    out.mkdir()
    model = create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32)
    with pytest.raises(ValueError, match="NaN"):
        export(model, name="g", out=out, settings=ExportSettings(formats=("onnx",), calib=str(tmp_path / "calib.npy"),
                                                                 calib_samples=32))
    assert list(out.iterdir()) == []


def test_a_failed_export_stops_its_worker(tmp_path, monkeypatch):
    """With parallel=True a worker starts converting the TFLite files first; the bad calibration
    data fails the export, and the worker and its files go with it."""
    import tempfile
    bad = np.full((64, 28, 28), np.nan, np.float32)
    np.save(tmp_path / "calib.npy", bad)
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this test's worker folders only, whatever runs beside
    model = create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32)
    with pytest.raises(ValueError, match="NaN"):
        export(model, name="g", out=out, settings=ExportSettings(calib=str(tmp_path / "calib.npy"), calib_samples=32,
                                                                 parallel=True))
    assert list(out.iterdir()) == []
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    assert not [c for c in children if "edgekit._background" in Path(f"/proc/{c}/cmdline").read_text()]
    assert not list(scratch.glob("edgekit-worker-*"))


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="format 'pb'"):
        ExportSettings(formats=("pb",))
    with pytest.raises(ValueError, match="dynamic-range files are not int8"):
        ExportSettings(precisions=("int8-weights",))
    with pytest.raises(ValueError, match="minmax"):
        ExportSettings(calib_method="kl")
    with pytest.raises(ValueError, match="calibration method 'kl'"):
        ExportSettings(calib_retry=("mse", "kl"))


@pytest.mark.slow
def test_below_the_floor_int8_is_calibrated_again_and_the_best_kept(tmp_path, monkeypatch):
    """The floor is raised out of reach, so every retry method runs: without --force nothing is
    written and the error lists each method's SQNR; with --max-drop the file passes on its measured
    top-1; with --force the most faithful file is written and its manifest says which method made it
    and what each one measured; only that file is timed against fp32."""
    ex = importlib.import_module("edgekit.export")  # the module: edgekit.export is the function
    torch.manual_seed(0)
    model = randomise_bn(Tiny()).eval()  # the retry logic does not depend on the network
    settings = dict(formats=("onnx",), precisions=("int8",), calib_samples=64, holdout=64)
    ok = export(model, name="g", out=tmp_path, settings=ExportSettings(**settings))[0]  # the floor as shipped
    assert [t["method"] for t in ok.artifact.manifest.metrics["calibration_tries"]] == ["minmax"]
    assert ok.artifact.manifest.calibration.method == "minmax"
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setitem(ex.SQNR_FLOOR_DB, "int8", 1000.0)
    with pytest.raises(ValueError, match=r"--max-drop POINTS accepts it.*calibrated with minmax [-\d.]+ dB, "
                                         r"mse [-\d.]+ dB, percentile [-\d.]+ dB"):
        export(model, name="g", out=out, settings=ExportSettings(**settings))
    assert list(out.iterdir()) == []
    # a top-1 drop measured within max_drop passes the file whatever its SQNR, and says so
    f = export(model, name="a", out=out, settings=ExportSettings(**settings, max_drop=100.0, accuracy_samples=64))[0]
    m = f.artifact.manifest
    assert m.precision == "int8" and m.metrics["accuracy"]["samples"] == 64
    assert any("below the 1000 dB floor; accepted on measured top-1" in n for n in m.notes), m.notes
    for p in out.iterdir():
        p.unlink()
    import edgekit.exporters.onnx as onnx_exporter
    timed = []
    monkeypatch.setattr(onnx_exporter, "_speed_check",
                        lambda *a, _check=onnx_exporter._speed_check, **k: timed.append(1) or _check(*a, **k))
    f = export(model, name="g", out=out, settings=ExportSettings(**settings, force=True))[0]
    m = load_artifact(f.artifact.path).manifest
    tries = m.metrics["calibration_tries"]
    assert [t["method"] for t in tries] == ["minmax", "mse", "percentile"]
    assert len(timed) == 1 and m.metrics["speed"]["runs"] >= 50, "only the file kept is timed against fp32"
    best = max(tries, key=lambda t: t["sqnr_db"])
    assert m.calibration.method == best["method"] and m.calibration.details["method"] == best["method"]
    assert abs(f.parity.sqnr_db - best["sqnr_db"]) < 0.01  # the file written is the one that measured best
    if best["method"] != "minmax":
        assert any("calibrated again" in n and f"kept {best['method']}" in n for n in m.notes), m.notes
    f = export(model, name="h", out=out, settings=ExportSettings(**settings, force=True, calib_retry=()))[0]
    assert [t["method"] for t in f.artifact.manifest.metrics["calibration_tries"]] == ["minmax"]


def test_cli_errors_exit_nonzero(tmp_path, edgekit_cli):
    r = cli("export", "ghostnet_05", "--out", str(tmp_path))  # once as its own process, as a user runs it
    assert r.returncode == 2 and "did you mean" in r.stderr
    (tmp_path / "a file").write_text("")
    r = edgekit_cli("export", "ghostnet_0_5", "--out", str(tmp_path / "a file"))
    assert r.returncode == 2 and "a file is a file, not a directory; pass another --out" in r.stderr
    started = time.monotonic()
    r = edgekit_cli("export", "ghostnet_1_0", "--resolution", "100000", "--out", str(tmp_path / "new"))
    assert r.returncode == 2 and time.monotonic() - started < 20, r.stderr
    assert re.search(r"input size 3x100000x100000 needs about [\d,.]+ GiB for its images and activations, and "
                     r"[\d,.]+ GiB is available; choose a smaller --resolution", r.stderr), r.stderr
    assert not (tmp_path / "new").exists()
    r = edgekit_cli("validate", str(tmp_path / "nothing.tflite"))
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.mark.slow
def test_tflite_files_converted_in_a_worker_are_the_same(tmp_path, monkeypatch):
    """parallel=True converts the TFLite graphs in a second process; the files must not differ from
    the ones converted in this process."""
    import edgekit._background as background
    torch.manual_seed(0)
    model = randomise_bn(Tiny()).eval()  # what is compared is the route, not the network
    started = []
    monkeypatch.setattr(background.Background, "start",
                        classmethod(lambda cls, *a, _start=background.Background.start.__func__, **k:
                                    started.append(_start(cls, *a, **k)) or started[-1]))
    data = {}
    for parallel in (False, True):
        out = tmp_path / str(parallel)
        out.mkdir()
        files = export(model, name="g", out=out, settings=ExportSettings(formats=("tflite",), calib_samples=32,
                                                                         holdout=32, parallel=parallel))
        data[parallel] = {f.artifact.manifest.precision: f.artifact.path.read_bytes() for f in files}
    assert len(started) == 1 and started[0] is not None, "parallel=True must have converted in a worker"
    assert set(data[True]) == {"fp32", "int8"}
    assert data[True] == data[False]
