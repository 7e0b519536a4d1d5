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
