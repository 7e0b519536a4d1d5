"""timm checkpoints of the zoo's networks (``timm:NAME --weights FILE``), without timm.

The fixtures in ``tests/data/timm`` were made once by ``make_fixtures.py`` in an environment with
timm: each architecture's state-dict keys and shapes, timm's preprocessing configuration, and timm's
logits for the ``seeded`` weights on a fixed 64x64 input. A test writes those weights as a
checkpoint, keys sorted as published checkpoints store them, loads it through edgekit and compares
edgekit's logits with timm's.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import seeded
from edgekit.calibration.data import preprocessing_for, resize
from edgekit.models import pretrained
from edgekit.models.pretrained import TIMM, load_checkpoint, load_timm

DATA = Path(__file__).parent / "data" / "timm"
FAST = ("ghostnet_050", "tf_efficientnet_b0", "fbnetc_100")
# one name of each kind of difference the mapping handles (GhostNet v2's DFC, timm's own eps, TF
# padding on a compound-scaled network, Fused-MBConv, FBNetV3's padding and tail); the other names are
# widths and depths of these, all 32 checked the same way by bench/timm.py
SLOW = ("ghostnetv2_100", "efficientnet_b0", "efficientnet_b3", "tf_efficientnet_b3", "efficientnetv2_s",
        "tf_efficientnetv2_s", "fbnetv3_b", "fbnetv3_d", "fbnetv3_g")


@pytest.fixture(scope="module")
def fixtures():
    with gzip.open(DATA / "architectures.json.gz", "rt") as f:
        archs = json.load(f)["architectures"]
    return archs, dict(np.load(DATA / "logits.npz"))


def _state(archs, name: str) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(s) for k, s, _ in archs[name]["keys"]}
    values = seeded.state(shapes)
    return {k: torch.from_numpy(values[k]) if k in values else torch.tensor(0) for k in sorted(shapes)}


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(seeded.image((1, 3, 64, 64)))).numpy()


def _rounding_level(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) <= 1e-5 * float(np.abs(b).max())


def test_the_table_covers_every_fixture(fixtures):
    archs, logits = fixtures
    assert set(TIMM) == set(archs) == set(logits)


@pytest.mark.parametrize("name", [*FAST, *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW)])
def test_outputs_equal_timms(fixtures, tmp_path, name):
    """Every mapped timm name: its checkpoint loads into the zoo's network (with that name's BN eps,
    padding, expansion convs) and the fp32 logits equal timm's at rounding level."""
    archs, logits = fixtures
    path = tmp_path / f"{name}.pth"
    torch.save(_state(archs, name), path)
    model, sha = load_timm(f"timm:{name}", path)
    assert len(sha) == 64
    out = _logits(model)
    assert out.shape == logits[name].shape
    assert _rounding_level(out, logits[name]), np.abs(out - logits[name]).max()


@pytest.mark.parametrize("name, change", [
    ("efficientnet_b0", {"bn_eps": None}),          # the zoo's 1e-3 instead of timm's 1e-5
    ("tf_efficientnet_b0", {"tf_padding": False}),  # symmetric instead of TF "SAME" padding
    pytest.param("tf_efficientnetv2_s", {"tf_padding": False}, marks=pytest.mark.slow),
    ("fbnetv3_b", {"plain_dw_padding": False}),     # the published definition's dw padding overrides
])
def test_each_difference_matters(fixtures, name, change):
    """Without the difference the variant table states, the same weights give other logits: the
    handling of each is needed, not incidental."""
    archs, logits = fixtures
    state = {k: v for k, v in _state(archs, name).items()}
    v = dataclasses.replace(TIMM[name], **change)
    model = pretrained._network(v, 1000)
    model.load_state_dict(pretrained._fit(model, state, name, v), strict=False)
    out = _logits(model.eval())
    assert out.shape == logits[name].shape
    assert float(np.abs(out - logits[name]).max()) > 1e-4 * float(np.abs(logits[name]).max())  # 10x rounding


@pytest.mark.slow  # a misfit builds every variant's shapes (about 8 s) to name the one it looks like
def test_fbnetc_expansion_convs_have_a_place_only_with_pw_always(fixtures):
    archs, _ = fixtures
    state = _state(archs, "fbnetc_100")
    v = dataclasses.replace(TIMM["fbnetc_100"], pw_always=False)
    with pytest.raises(ValueError, match=r"blocks\.0\.0\.bn1\.bias .* has no place in timm:fbnetc_100"):
        pretrained._fit(pretrained._network(v, 1000), state, "fbnetc_100", v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_safetensors_load_as_fp32(fixtures, tmp_path, dtype):
    from safetensors.torch import save_file

    archs, _ = fixtures
    state = _state(archs, "ghostnet_050")
    path = tmp_path / "g.safetensors"
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, path)
    model, _ = load_timm("timm:ghostnet_050", path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref = torch.from_numpy(seeded.state({"conv_stem.weight": (8, 3, 3, 3)})["conv_stem.weight"])
    assert torch.equal(model.stem[0].weight, state["conv_stem.weight"].to(dtype).float())
    assert not torch.equal(model.stem[0].weight, ref) or dtype is None


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_training_checkpoints_are_unwrapped(fixtures, tmp_path, wrap):
    """What training scripts save: the state dict under "state_dict" or "model" beside the epoch
    and optimiser settings, or with DataParallel's "module." prefix on every key."""
    archs, logits = fixtures
    state = _state(archs, "ghostnet_050")
    blob = ({f"module.{k}": v for k, v in state.items()} if wrap == "module." else
            {wrap: state, "epoch": 300, "arch": "ghostnet_050", "lr": 0.1})
    path = tmp_path / "ck.pth.tar"
    torch.save(blob, path)
    model, _ = load_timm("timm:ghostnet_050", path)
    assert _rounding_level(_logits(model), logits["ghostnet_050"])


@pytest.mark.slow
def test_another_width_is_named(fixtures, tmp_path):
    archs, _ = fixtures
    path = tmp_path / "g130.pth"
    torch.save(_state(archs, "ghostnet_130"), path)
    with pytest.raises(ValueError, match=r"does not fit timm:ghostnet_100: tensor \S+ has shape .*; it looks like "
                                         r"timm:ghostnet_130"):
        load_timm("timm:ghostnet_100", path)


@pytest.mark.slow
def test_another_architecture_is_named(fixtures, tmp_path):
    archs, _ = fixtures
    path = tmp_path / "e.pth"
    torch.save(_state(archs, "efficientnet_b0"), path)
    with pytest.raises(ValueError, match=r"does not fit timm:fbnetv3_b: .*it looks like timm:efficientnet_b0"):
        load_timm("timm:fbnetv3_b", path)


class _Payload:  # a pickled object that would run code if unpickled without weights_only
    def __reduce__(self):
        return (print, ("executed",))


def test_bad_files_are_refused_and_nothing_runs(fixtures, tmp_path, capsys):
    from safetensors.torch import save_file

    archs, _ = fixtures
    state = _state(archs, "ghostnet_050")
    good = tmp_path / "g.safetensors"
    save_file(state, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file .*truncated"):
        load_checkpoint(cut)
    pth = tmp_path / "g.pth"
    torch.save(state, pth)
    cut_pth = tmp_path / "cut.pth"
    cut_pth.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot be read .*truncated"):
        load_checkpoint(cut_pth)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv_stem.weight": _Payload()}, f)
    with pytest.raises(ValueError, match="never runs code"):
        load_checkpoint(evil)
    assert "executed" not in capsys.readouterr().out
    odd = tmp_path / "odd.pth"
    torch.save({"conv_stem.weight": [1.0, 2.0]}, odd)
    with pytest.raises(ValueError, match="entry 'conv_stem.weight' is list, not a tensor"):
        load_checkpoint(odd)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"unknown timm model 'ghostnet_10'; did you mean .*timm:ghostnet_100"):
        load_timm("timm:ghostnet_10", good)


def test_timms_preprocessing_is_what_calibration_applies(fixtures, tmp_path):
    """Input side, crop share, interpolation, mean and std of timm's configuration for the name go
    into default_cfg, and preprocessing_for turns them into the Preprocessing the pipeline uses."""
    archs, _ = fixtures
    for name in ("tf_efficientnet_b0", "fbnetv3_g", "efficientnet_b1"):
        path = tmp_path / f"{name}.pth"
        torch.save(_state(archs, name), path)
        model, _ = load_timm(f"timm:{name}", path)
        cfg = archs[name]["cfg"]
        pre = preprocessing_for(model.default_cfg)
        assert list(pre.resolution) == cfg["input_size"][1:]
        assert pre.crop_pct == pytest.approx(cfg["crop_pct"])
        assert pre.resize == {"bicubic": "bicubic-aa", "bilinear": "bilinear-aa"}[cfg["interpolation"]]
        assert list(pre.mean) == pytest.approx(cfg["mean"]) and list(pre.std) == pytest.approx(cfg["std"])


@pytest.mark.parametrize("mode, pil", [("bicubic-aa", "BICUBIC"), ("bilinear-aa", "BILINEAR")])
@pytest.mark.parametrize("src, dst", [((37, 53), (16, 20)), ((30, 24), (64, 64)), ((300, 400), (224, 224))])
def test_antialiased_resize_is_pillows(mode, pil, src, dst):
    from PIL import Image

    x = np.random.default_rng(0).random(src).astype(np.float32)
    ref = np.asarray(Image.fromarray(x, mode="F").resize(dst[::-1], getattr(Image.Resampling, pil)))
    out = resize(x[None, None], dst, mode=mode)[0, 0]
    assert float(np.abs(out - ref).max()) < 1e-5


def _image_folder(root: Path) -> Path:
    """Three classes of JPEG / PNG images of several sizes, as an ImageNet-style folder holds them."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for c in range(3):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            im = (rng.random((40 + 9 * i, 56, 3)) * 255).astype(np.uint8)
            Image.fromarray(im).save(folder / f"{i}{'.jpg' if i % 2 else '.png'}")
    return root


@pytest.mark.slow
def test_checkpoint_to_int8_validated_on_images_and_run(fixtures, tmp_path, home, edgekit_cli):
    """README's walk-through (with the ONNX int8 file, the quicker to make; the TFLite exporter takes
    the same model and manifest fields): a timm GhostNet checkpoint to int8, validated on an image
    folder (timm's bicubic crop applied), run on the local device against the PyTorch network
    rebuilt from the checkpoint the manifest names."""
    from safetensors.torch import save_file

    archs, _ = fixtures
    ckpt = tmp_path / "ghostnet_050.safetensors"
    save_file(_state(archs, "ghostnet_050"), ckpt)
    out = tmp_path / "out"
    out.mkdir()
    done = edgekit_cli("export", "timm:ghostnet_050", "--weights", ckpt, "--resolution", 64, "--format", "onnx",
                       "--precision", "int8", "--calib-samples", 64, "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    (art,) = json.loads(done.stdout)["artifacts"]
    manifest = json.loads(Path(art["manifest"]).read_text())
    assert manifest["source"]["kind"] == "timm" and manifest["source"]["weights"] == str(ckpt)
    assert manifest["preprocessing"]["resize"] == "bicubic-aa" and manifest["preprocessing"]["crop_pct"] == 0.875
    images = _image_folder(tmp_path / "images")
    done = edgekit_cli("validate", art["path"], "--data", images, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n"] == 18 and report["torch_top1"] is not None and report["parity"]["n"] == 18
    done = edgekit_cli("run", art["path"], "--compare", "--samples", 8, "--runs", 5, "--warmup", 2, "--max-runs", 10)
    assert done.returncode == 0, done.stderr
    assert "parity" in done.stdout
    moved = tmp_path / "moved.safetensors"
    ckpt.rename(moved)
    done = edgekit_cli("validate", art["path"], "--data", images)
    assert done.returncode != 0 and f"the checkpoint {ckpt} of timm:ghostnet_050 is gone" in done.stderr
    done = edgekit_cli("validate", art["path"], "--data", images, "--weights", moved)
    assert done.returncode == 0, done.stderr


def test_export_refuses_what_a_checkpoint_decides(tmp_path, edgekit_cli):
    done = edgekit_cli("export", "timm:ghostnet_050", "--out", tmp_path)
    assert done.returncode != 0 and "needs its checkpoint: --weights FILE" in done.stderr
    done = edgekit_cli("export", "timm:ghostnet_050", "--weights", tmp_path / "x.pth", "--num-classes", 10,
                       "--out", tmp_path)
    assert done.returncode != 0 and "only --resolution may change" in done.stderr


@pytest.mark.slow
def test_fine_tuned_checkpoint_exports_with_its_preprocessing(fixtures, tmp_path, edgekit_cli):
    """train timm:NAME --init FILE: the checkpoint's network with a new 10-class classifier, trained
    on Fashion-MNIST; its weights file rebuilds the same network (TF padding and eps kept) with
    timm's preprocessing for that name."""
    from edgekit.train import load_weights

    archs, _ = fixtures
    ckpt = tmp_path / "b0.pth"
    torch.save(_state(archs, "tf_efficientnet_b0"), ckpt)
    out = tmp_path / "ft.pt"
    done = edgekit_cli("train", "timm:tf_efficientnet_b0", "--init", ckpt, "--data", "fashion-mnist:400",
                       "--resolution", 32, "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    model, meta, _ = load_weights(out)
    assert meta["init"]["spec"] == "timm:tf_efficientnet_b0" and meta["num_classes"] == 10
    assert model.spec.padding == "same" and model.spec.bn_eps == 1e-3
    assert model.head.classifier.out_features == 10
    pre = preprocessing_for(model.default_cfg)
    assert pre.resize == "bicubic-aa" and pre.crop_pct == 0.875 and pre.resolution == (32, 32)
    start, _ = load_timm("timm:tf_efficientnet_b0", ckpt)
    assert not torch.equal(start.stem[0].weight, model.stem[0].weight)  # trained, not just copied
    done = edgekit_cli("train", "ghostnet_0_5", "--init", ckpt, "--out", out)
    assert done.returncode != 0 and "--init starts from a timm checkpoint" in done.stderr
