"""Networks from outside the zoo: a factory in a file or module, a saved torch.export program, or
any ``nn.Module`` through the Python API; each described by ``--input-size`` / ``--mean`` /
``--std`` and recorded so that ``validate`` and ``run --compare`` build the same network again."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit
from edgekit.export import ExportSettings
from edgekit.exporters.artifact import load_artifact
from edgekit.models.external import describe, load_external, state_digest

NETS = Path(__file__).with_name("external_nets.py")


def _spec(factory: str) -> str:
    return f"{NETS}:{factory}"


# ---- bad input: named, nothing built or written ----------------------------------------------------

@pytest.mark.parametrize("factory,message", [
    ("needs_width", r"needs argument\(s\) \['width'\]; edgekit calls it with none"),
    ("not_a_module", "returned str, not a torch.nn.Module"),
    ("no_such_factory", "has no callable 'no_such_factory' .*residual"),
])
def test_a_factory_that_cannot_give_a_module_is_named(factory, message):
    with pytest.raises(ValueError, match=message):
        load_external(_spec(factory))


def test_a_factory_that_does_not_import_is_shortened_to_its_error(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy\nimport no_such_package_here\n")
    with pytest.raises(ValueError, match=r"importing broken\.py failed: ModuleNotFoundError: No module named "
                                         r"'no_such_package_here'$"):
        load_external(f"{broken}:make")
    with pytest.raises(ValueError, match="importing no_such_package_here.nets failed"):
        load_external("no_such_package_here.nets:make")
    with pytest.raises(ValueError, match="does not exist"):
        load_external(f"{tmp_path / 'absent.py'}:make")
    with pytest.raises(ValueError, match="path/to/file.py:function"):
        load_external(":make")


def test_outputs_and_input_sizes_the_exporters_cannot_take_are_refused():
    with pytest.raises(ValueError, match="returns dict; edgekit exports modules that return a tensor"):
        describe(load_external(_spec("dict_out"))[0], input_size=(3, 32, 32), name="dict_out")
    with pytest.raises(ValueError, match=r"rejects an input of shape \(1, 3, 32, 32\) \(ValueError: Only64 takes "
                                         r"64x64 images"):
        describe(load_external(_spec("only_64"))[0], input_size=(3, 32, 32), name="only_64")
    cfg = describe(load_external(_spec("two_outputs"))[0], input_size=(3, 32, 32), name="two_outputs").default_cfg
    assert cfg["num_outputs"] == 2 and cfg["output_shapes"] == [[1, 7], [1, 16, 16, 16]] and cfg["num_classes"] == 7
    net = load_external(_spec("residual"))[0]
    with pytest.raises(ValueError, match="--mean has 2 values for 3 input channel"):
        describe(net, input_size=(3, 32, 32), mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="C,H,W"):
        describe(net, input_size=(32, 32))
    cfg = describe(net, input_size=(3, 32, 32), preset="inception").default_cfg
    assert cfg["mean"] == [0.5] * 3 and cfg["num_classes"] == 7 and cfg["input_size"] == [3, 32, 32]


def test_cli_names_what_an_external_network_needs(tmp_path, edgekit_cli):
    res = edgekit_cli("export", _spec("residual"), "--out", tmp_path)
    assert res.returncode == 2 and "--input-size C,H,W" in res.stderr
    res = edgekit_cli("export", "ghostnet_0_5", "--input-size", "3,32,32", "--out", tmp_path)
    assert res.returncode == 2 and "a zoo model knows its own" in res.stderr
    res = edgekit_cli("export", _spec("residual"), "--input-size", "3,32", "--out", tmp_path)
    assert res.returncode == 2 and "C,H,W (3 numbers)" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_program_file_is_refused(tmp_path):
    prog = tmp_path / "net.pt2"
    net = load_external(_spec("residual"))[0]
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 32, 32),)), str(prog))
    data = prog.read_bytes()
    prog.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a torch.export program"):
        load_external(str(prog))


def test_the_same_factory_gives_the_same_state_digest():
    a, sa = load_external(_spec("residual"))
    b, sb = load_external(_spec("residual"))
    assert sa == sb and sa.kind == "factory" and sa.file_sha256 and state_digest(a) == state_digest(b)
    with torch.no_grad():
        b.head.bias.add_(1.0)
    assert state_digest(b) != sa.state_sha256


# ---- the whole pipeline ------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_factory_file_exported_validated_and_compared_with_its_rebuilt_reference(tmp_path, home, edgekit_cli):
    out = tmp_path / "out"
    out.mkdir()
    res = edgekit_cli("export", _spec("residual"), "--input-size", "3,32,32", "--preset", "imagenet", "--out", out,
                      "--calib", "fashion-mnist:64", "--json")
    assert res.returncode == 0, res.stderr
    arts = json.loads(res.stdout)["artifacts"]
    assert len(arts) == 4 and all(a["parity"]["sqnr_db"] > 25 for a in arts)
    m = load_artifact(out / "residual-tflite-int8.tflite").manifest
    assert m.source["kind"] == "factory" and m.source["spec"] == _spec("residual") and m.num_classes == 7
    assert m.preprocessing.channels == 3 and m.preprocessing.mean == (0.485, 0.456, 0.406)
    report = edgekit.validate(out / "residual-tflite-int8.tflite", limit=200)
    assert report.torch_top1 is not None and report.parity.sqnr_db > 25
    run = edgekit.run(out / "residual-onnx-int8.onnx", compare=True, samples=4, store=False)
    (rep,) = run.parity.values()  # the reference built again from the factory
    assert rep.sqnr_db > 25 and rep.n == 4


@pytest.mark.slow
def test_a_program_and_a_bare_module_export_and_an_unlowerable_op_writes_nothing(tmp_path, home, edgekit_cli):
    net = load_external(_spec("residual"))[0]
    prog = tmp_path / "residual.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 32, 32),)), str(prog))
    out = tmp_path / "prog"
    out.mkdir()
    res = edgekit_cli("export", prog, "--input-size", "3,32,32", "--format", "onnx", "--precision", "fp32",
                      "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    m = load_artifact(out / "residual-onnx-fp32.onnx").manifest
    assert m.source["kind"] == "program" and m.source["file_sha256"]
    assert edgekit.validate(out / "residual-onnx-fp32.onnx", limit=100).parity.sqnr_db > 60

    bare = tmp_path / "bare"
    bare.mkdir()
    files = edgekit.export(net, name="bare", out=bare, input_size=(3, 32, 32), mean=(0.5,), std=(0.25,),
                           settings=ExportSettings(formats=("onnx",), precisions=("fp32",)))
    assert files[0].artifact.manifest.preprocessing.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="no default_cfg saying its input size"):
        edgekit.export(torch.nn.Conv2d(3, 3, 1), name="conv", out=bare)

    bad = tmp_path / "bad"
    bad.mkdir()
    res = edgekit_cli("export", _spec("spectral"), "--input-size", "3,32,32", "--format", "tflite", "--precision",
                      "fp32", "--out", bad)
    assert res.returncode == 2 and "op aten._fft_r2c" in res.stderr and "Spectral" in res.stderr
    assert list(bad.iterdir()) == []
    assert np.isfinite(files[0].parity.sqnr_db)


@pytest.mark.slow
def test_a_module_with_two_outputs_exports_with_every_output_checked(tmp_path, home, edgekit_cli):
    """Logits and a feature map: all four files keep both outputs in the module's order (the map
    channels-last in TFLite), each output is checked against PyTorch at export (the file's parity is
    the worse one's, each one's in the manifest), on the device, and validate reads the logits."""
    out = tmp_path / "out"
    out.mkdir()
    res = edgekit_cli("export", _spec("two_outputs"), "--input-size", "3,32,32", "--out", out,
                      "--calib", "fashion-mnist:64", "--json")
    assert res.returncode == 0, res.stderr
    arts = {(a["format"], a["precision"]): a for a in json.loads(res.stdout)["artifacts"]}
    assert len(arts) == 4
    for (fmt, precision), a in arts.items():
        m = load_artifact(a["path"]).manifest
        assert [len(t.shape) for t in m.outputs] == [2, 4]
        assert m.outputs[1].layout == ("NHWC" if fmt == "tflite" else "NCHW")
        per = m.metrics["parity_per_output"]
        assert [p["output"] for p in per] == [t.name for t in m.outputs]
        assert a["parity"]["sqnr_db"] == pytest.approx(min(p["sqnr_db"] for p in per))
        assert min(p["sqnr_db"] for p in per) > (60 if precision == "fp32" else 25)
    run = edgekit.run(arts["tflite", "int8"]["path"], compare=True, samples=4, store=False)
    assert len(run.parity) == 2 and all(r.sqnr_db > 25 for r in run.parity.values())
    report = edgekit.validate(arts["onnx", "int8"]["path"], limit=200)
    assert report.torch_top1 is not None and report.parity.shape == (200, 7)
    res = edgekit_cli("export", _spec("two_outputs"), "--input-size", "3,32,32", "--out", out, "--max-drop", "1")
    assert res.returncode == 2 and "returns 2 outputs; --max-drop and --sensitivity" in res.stderr
