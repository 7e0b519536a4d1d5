"""Real images in class folders (ImageNet's layout) of any size, JPEG and PNG: resized and
centre-cropped as the model's preprocessing says, for calibration, validation and device runs."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.calibration.data import crop_canvas, load_dataset, preprocess
from edgekit.exporters.artifact import Preprocessing

CLASSES = ("n01_tench", "n02_goldfish", "n03_shark", "n04_hen", "n05_ostrich", "n06_finch")
PRE = Preprocessing(resolution=(32, 32), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                    crop_pct=0.875)


def make_folders(root: Path, per_class: int = 3) -> Path:
    """train/ and test/ with one folder per class; images of several sizes and aspect ratios, each
    class its own colour so a network can tell them apart, PNG and JPEG alternating."""
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (64, 48), (33, 33), (50, 80)]
    for split in ("train", "test"):
        for ci, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                h, w = sizes[(ci + k) % len(sizes)]
                base = np.array([40 * ci, 255 - 40 * ci, (80 * ci) % 256], np.float32)
                im = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                ext = ".png" if k % 2 else ".jpg"
                Image.fromarray(im).save(folder / f"{k}{ext}")
    return root


def test_images_of_any_size_are_resized_to_cover_and_centre_cropped(tmp_path):
    root = make_folders(tmp_path / "imgs")
    with pytest.raises(ValueError, match="different sizes.*load them for a model"):
        load_dataset(root, split="test")
    ds = load_dataset(root, split="test", fit=PRE)
    assert crop_canvas(PRE) == (36, 36) and ds.images.shape == (len(CLASSES) * 3, 36, 36, 3)
    assert ds.class_names == CLASSES and ds.labels.tolist() == [c for c in range(len(CLASSES)) for _ in range(3)]
    x = preprocess(ds.images, PRE)
    assert x.shape == (18, 3, 32, 32) and np.isfinite(x).all()


def test_the_crop_keeps_the_centre_and_the_aspect(tmp_path):
    """A 64x48 image, white in its central 32x24 and black around: covering 36x36 scales it by 0.75
    (to 48x36), the canvas keeps rows 6..42, the 32x32 crop rows 8..40 of that: all white but the
    border rows of the scaled white box."""
    im = np.zeros((64, 48), np.uint8)
    im[16:48, 12:36] = 255
    folder = tmp_path / "one" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(im).save(folder / "x.png")
    grey = Preprocessing(resolution=(32, 32), channels=1, mean=(0.0,), std=(1.0,), channel_order="L", crop_pct=0.875)
    x = preprocess(load_dataset(tmp_path / "one", fit=grey).images, grey)[0, 0]
    assert x.shape == (32, 32)
    assert x[16, 16] == pytest.approx(1.0) and x[0, 0] == pytest.approx(0.0)
    white_cols = np.flatnonzero(x[16] > 0.5)  # the box is 18 wide after scaling, centred
    assert 16 <= len(white_cols) <= 20 and abs((white_cols[0] + white_cols[-1]) / 2 - 15.5) <= 1


def test_an_image_of_the_canvas_size_keeps_its_centre_pixel_for_pixel(tmp_path):
    """crop_pct 0.875 at 32 px: a 36x36 image is the canvas already, and the input is its centre
    32x32, cropped, not resized."""
    im = np.random.default_rng(1).integers(0, 256, (36, 36), dtype=np.uint8)
    grey = Preprocessing(resolution=(32, 32), channels=1, mean=(0.0,), std=(1.0,), channel_order="L", crop_pct=0.875)
    x = preprocess(im[None], grey)[0, 0]
    np.testing.assert_array_equal(x, im[2:34, 2:34].astype(np.float32) / np.float32(255))


def test_an_unreadable_image_and_an_empty_folder_are_named(tmp_path):
    root = make_folders(tmp_path / "imgs", per_class=1)
    (root / "test" / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"broken\.jpg cannot be read"):
        load_dataset(root, split="test", fit=PRE)
    empty = tmp_path / "empty" / "cls"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in class sub-folders"):
        load_dataset(tmp_path / "empty", fit=PRE)


@pytest.mark.slow
def test_calibrated_and_validated_on_image_folders_with_top5(tmp_path, edgekit_cli):
    nets = Path(__file__).with_name("external_nets.py")
    root = make_folders(tmp_path / "imgs", per_class=6)
    out = tmp_path / "out"
    out.mkdir()
    res = edgekit_cli("export", f"{nets}:residual", "--input-size", "3,32,32", "--format", "onnx", "--out", out,
                      "--calib", root, "--calib-samples", "32", "--force", "--json")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "residual-onnx-int8.manifest.json").read_text())
    assert manifest["calibration"]["dataset"].endswith("imgs")  # drawn from its train/ split
    res = edgekit_cli("validate", out / "residual-onnx-int8.onnx", "--data", root, "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["n"] == 36 and doc["dataset"].endswith("imgs/test")
    assert doc["top5"] is not None and doc["torch_top5"] is not None and doc["top5"] >= doc["top1"]
    text = edgekit_cli("validate", out / "residual-onnx-int8.onnx", "--data", root).stdout
    assert "top-5" in text and "PyTorch" in text
