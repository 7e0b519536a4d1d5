"""Training on real Fashion-MNIST (a small slice, so the fast tier stays fast) and weight files."""
import pytest
import torch

from edgekit.models import create_model
from edgekit.train import TrainConfig, default_resolution, load_weights, train


def test_brief_training_beats_chance_and_round_trips(tmp_path):
    out = tmp_path / "w.pt"
    seen = []
    result = train("ghostnet_0_5", out=out, config=TrainConfig(epochs=1, limit=1024, test_limit=500, batch_size=64),
                   progress=seen.append)
    assert seen and seen[0]["epoch"] == 1
    # 1024 images, one epoch: far from converged, but well above the 10 % of guessing
    assert result.top1 > 0.3, result
    model, meta, sha = load_weights(out)
    assert meta["model"] == "ghostnet_0_5" and meta["in_chans"] == 1 and meta["resolution"] == [32, 32]
    assert len(sha) == 64
    assert model.default_cfg["input_size"] == [1, 32, 32]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_mismatched_weights_name_the_first_bad_tensor(tmp_path):
    out = tmp_path / "w.pt"
    from edgekit.train import save_weights
    model = create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32)
    save_weights(out, model, {"model": "ghostnet_0_5", "num_classes": 10, "in_chans": 1, "resolution": [32, 32]})
    other = create_model("ghostnet_0_5", num_classes=10, in_chans=3, resolution=32)
    with pytest.raises(ValueError, match=r"tensor 'stem.0.weight' has shape \(8, 1, 3, 3\) in the file but \(8, 3, 3, 3\)"):
        load_weights(out, other)
    wrong_family = create_model("fbnet_a", num_classes=10, in_chans=1, resolution=32)
    with pytest.raises(ValueError, match="is missing|unexpected tensor|has shape"):
        load_weights(out, wrong_family)


def test_truncated_weights_file(tmp_path):
    out = tmp_path / "w.pt"
    from edgekit.train import save_weights
    model = create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32)
    save_weights(out, model, {"model": "ghostnet_0_5", "num_classes": 10, "in_chans": 1, "resolution": [32, 32]})
    out.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot be read"):
        load_weights(out)


def test_default_resolution_respects_the_family_limits():
    assert default_resolution("ghostnet_1_0") == 32
    assert default_resolution("fbnetv3_a") >= 49
    assert default_resolution("espnet_v1") % 8 == 0


def test_bad_config():
    with pytest.raises(ValueError, match="batch_size 1"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="epochs 0"):
        TrainConfig(epochs=0)


@pytest.mark.slow
def test_cli_trains_a_searched_archspec_and_export_finds_its_weights(tmp_path, capsys):
    """``edgekit train NAME --arch SPEC``: the network the ArchSpec describes, named NAME, at its
    resolution, on Fashion-MNIST; the weights record the spec, and ``edgekit export NAME --weights``
    rebuilds it."""
    import json
    from edgekit.cli import main
    from edgekit.nas.dmasking import FBNetV2Space
    space = FBNetV2Space(resolution=16, resolutions=(16, 12), width=1.0, in_chans=1, num_classes=10,
                         stem_channels=(8, 16, 8), head_channels=64,
                         stages=(((8, 16, 8), 1, 1, (1.0,)), ((8, 16, 8), 2, 2, (2.0, 3.0))))
    searched = space.spec(space.widest()).replace(resolution=12)
    (tmp_path / "spec.json").write_text(searched.to_json())
    spec = searched.replace(name="mine")  # trained and exported under the name given
    weights = tmp_path / "w.pt"
    assert main(["train", "mine", "--arch", str(tmp_path / "spec.json"), "--limit", "256", "--batch-size", "64",
                 "--out", str(weights), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["epochs"] == 1 and 0 <= doc["top1"] <= 1
    model, meta, _ = load_weights(weights)
    assert meta["model"] is None and meta["arch"] == spec.to_dict() and meta["resolution"] == [12, 12]
    assert model.default_cfg["input_size"] == [1, 12, 12]
    assert main(["export", spec.name, "--weights", str(weights), "--format", "onnx", "--precision", "fp32",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    for args, says in (((spec.name, "--arch", str(tmp_path / "missing.json")), "cannot read the ArchSpec"),
                       ((spec.name, "--arch", str(tmp_path / "spec.json"), "--width", "0.5"), "--init and --width"),
                       ((spec.name, "--arch", str(weights)), "is not an ArchSpec JSON")):
        assert main(["train", *args, "--out", str(tmp_path / "x.pt")]) == 2
        assert says in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
