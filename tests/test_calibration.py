"""Calibration data (real Fashion-MNIST, IDX / image-folder / .npy sources, preprocessing) and int8
range estimators."""
import gzip
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.calibration import (MSE, Entropy, MinMax, Percentile, RangeObserver, SyntheticDataWarning,
                                 calibration_batch, fake_quantize, load_dataset, method_from_name, preprocess,
                                 preprocessing_for, quantization_mse, ranges_for_arrays, read_idx, resize,
                                 scale_zero_point, synthetic_batch)
from edgekit.calibration.data import FASHION_MNIST_CLASSES, fashion_mnist_dir
from edgekit.exporters.artifact import Preprocessing

FMNIST = fashion_mnist_dir()
needs_fmnist = pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")
GREY32 = Preprocessing(resolution=(32, 32), channels=1, mean=(0.5,), std=(0.25,), channel_order="L")
RGB32 = Preprocessing(resolution=(32, 32), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def write_idx(path, arr: np.ndarray, *, gz=False):
    code = {np.dtype("uint8"): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)
    return path


@pytest.fixture(scope="module")
def fmnist_test():
    return load_dataset("fashion-mnist", split="test")


# ---- Fashion-MNIST and IDX -------------------------------------------------------------------

@needs_fmnist
def test_fashion_mnist_test_split_is_the_real_one(fmnist_test):
    ds = fmnist_test
    assert ds.images.shape == (10_000, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.class_names[0] == "T-shirt/top"
    assert ds.name == "fashion-mnist/test"
    assert 50 < ds.images.mean() < 90 and ds.images.max() == 255   # real pictures, not zeros
    assert not ds.images.flags.writeable


@needs_fmnist
def test_fashion_mnist_limit_and_suffix(fmnist_test):
    a = load_dataset("fashion-mnist:25")
    b = load_dataset("fashion-mnist", limit=25)
    c = load_dataset("fashion-mnist:100", limit=25)
    for ds in (a, b, c):
        assert len(ds) == 25
        np.testing.assert_array_equal(ds.images, fmnist_test.images[:25])
        np.testing.assert_array_equal(ds.labels, fmnist_test.labels[:25])
    with pytest.raises(ValueError, match="after ':' must be a number"):
        load_dataset("fashion-mnist:lots")
    with pytest.raises(ValueError, match="limit 0"):
        load_dataset("fashion-mnist", limit=0)
    with pytest.raises(ValueError, match="split 'tset'.*did you mean 'test'"):
        load_dataset("fashion-mnist", split="tset")
    with pytest.raises(ValueError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion_mnist")


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist.*pass a"):
        load_dataset("fashion-mnist")


def test_env_override_and_idx_directory(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 5, 7), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)             # plain, not gzip'd
    monkeypatch.setenv("EDGEKIT_FASHION_MNIST_DIR", str(tmp_path))
    ds = load_dataset("fashion-mnist:10")
    np.testing.assert_array_equal(ds.images, images[:10])
    assert ds.labels.tolist() == labels[:10].tolist() and ds.class_names == FASHION_MNIST_CLASSES
    generic = load_dataset(tmp_path)                                    # a plain IDX directory
    assert len(generic) == 12 and generic.class_names == tuple(str(i) for i in range(10))
    with pytest.raises(ValueError, match="not found"):
        load_dataset("fashion-mnist", split="train")                   # no train files there


@needs_fmnist
def test_truncated_idx_is_a_clear_error(tmp_path):
    raw = gzip.open(FMNIST / "t10k-labels-idx1-ubyte.gz").read()
    cut = tmp_path / "t10k-labels-idx1-ubyte"
    cut.write_bytes(raw[:-100])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte is truncated: the header declares 10000 uint8 "
                                         r"= 10008 bytes, the file has 9908"):
        read_idx(cut)
    cut_gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    cut_gz.write_bytes((FMNIST / "t10k-images-idx3-ubyte.gz").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is a corrupt or truncated gzip file"):
        load_dataset(tmp_path)
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x00\x00\x07\x01" + raw[4:])
    with pytest.raises(ValueError, match="bad is not an IDX file: magic number 00000701"):
        read_idx(bad_magic)
    longer = tmp_path / "long"
    longer.write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="longer than its header says"):
        read_idx(longer)


# ---- image folders and .npy ------------------------------------------------------------------

@needs_fmnist
def test_image_folders_round_trip_real_images(tmp_path, fmnist_test):
    from PIL import Image

    picked = {0: [], 9: []}
    for i, lab in enumerate(fmnist_test.labels[:40]):
        if lab in picked and len(picked[lab]) < 3:
            picked[lab].append(i)
    for lab, idx in picked.items():
        d = tmp_path / "train" / FASHION_MNIST_CLASSES[lab].replace("/", "-")
        d.mkdir(parents=True)
        for j, i in enumerate(idx):
            ext = ".png" if j % 2 == 0 else ".pgm"
            Image.fromarray(fmnist_test.images[i]).save(d / f"{j:03d}{ext}")
    ds = load_dataset(tmp_path, split="train")                        # train/ chosen by split
    assert ds.class_names == ("Ankle boot", "T-shirt-top")             # sorted folder names
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(ds.images, fmnist_test.images[picked[9] + picked[0]])
    assert len(load_dataset(tmp_path / "train", limit=4)) == 4


def test_image_folders_colour_and_size_rules(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((6, 6), 10, np.uint8)).save(tmp_path / "a" / "grey.png")
    Image.fromarray(np.full((6, 6, 3), (255, 0, 0), np.uint8)).save(tmp_path / "b" / "red.png")
    ds = load_dataset(tmp_path)
    assert ds.images.shape == (2, 6, 6, 3)                            # one colour image -> all RGB
    assert ds.images[0, 0, 0].tolist() == [10, 10, 10] and ds.images[1, 0, 0].tolist() == [255, 0, 0]
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp_path / "b" / "tall.png")
    with pytest.raises(ValueError, match=r"different sizes: 6x6 \(grey.png\), 8x6 \(tall.png\)"):
        load_dataset(tmp_path)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no IDX files.*no images in class sub-folders"):
        load_dataset(empty)


def test_npy_sources(tmp_path):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (6, 9, 9), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    ds = load_dataset(tmp_path / "u8.npy", limit=4)
    np.testing.assert_array_equal(ds.images, u8[:4])
    assert ds.labels is None and ds.class_names == ()
    np.save(tmp_path / "f.npy", (u8 / 255.0)[..., None])               # float, (N, H, W, 1)
    f = load_dataset(str(tmp_path / "f.npy"))
    assert f.images.shape == (6, 9, 9) and f.images.dtype == np.float32
    np.testing.assert_allclose(preprocess(f.images, GREY32), preprocess(u8, GREY32), atol=1e-6)
    np.save(tmp_path / "nchw.npy", rng.random((2, 3, 9, 9)))
    with pytest.raises(ValueError, match=r"has 9 channels .*channels-first, transpose it"):
        load_dataset(tmp_path / "nchw.npy")
    np.save(tmp_path / "big.npy", rng.random((2, 4, 4)) * 255)
    with pytest.raises(ValueError, match=r"must be scaled to \[0, 1\].*pass them as uint8"):
        calibration_batch(str(tmp_path / "big.npy"), GREY32, samples=1)
    bad = rng.random((3, 4, 4))
    bad[2, 1, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"1 non-finite values \(1 NaN, 0 Inf\), the first at index \(2, 1, 3\)"):
        load_dataset(tmp_path / "nan.npy")
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "missing.npy")
    (tmp_path / "notes.npy").write_text("these are not images\n")  # a file named .npy that numpy never wrote
    with pytest.raises(ValueError, match=r"notes.npy is not a numpy array file \(no .npy header\)") as e:
        load_dataset(tmp_path / "notes.npy")
    assert "pickled" not in str(e.value)


# ---- preprocessing ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(32, 32), (17, 45), (14, 14), (224, 224), (28, 28)])
def test_resize_matches_torch_interpolate(size):
    x = np.random.default_rng(2).random((3, 2, 28, 28), dtype=np.float32)
    for mode, kw in (("bilinear", {"align_corners": False}), ("nearest", {})):
        ref = F.interpolate(torch.from_numpy(x), size=size, mode=mode, **kw).numpy()
        np.testing.assert_allclose(resize(x, size, mode=mode), ref, rtol=0, atol=2e-6)


@needs_fmnist
def test_preprocess_equals_the_torch_pipeline(fmnist_test):
    images = fmnist_test.images[:16]
    t = torch.from_numpy(np.array(images)).float().div(255)[:, None]             # (N, 1, 28, 28)
    t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    t = (t - torch.tensor(RGB32.mean)[:, None, None]) / torch.tensor(RGB32.std)[:, None, None]
    out = preprocess(images, RGB32)
    assert out.shape == (16, 3, 32, 32) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, t.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(preprocess(images, RGB32, layout="NHWC"), out.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(preprocess(images, RGB32), out)      # deterministic
    with pytest.raises(ValueError, match="layout 'NWHC'"):
        preprocess(images, RGB32, layout="NWHC")


def test_channel_rules():
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    grey_rgb_order = Preprocessing(resolution=(8, 8), channels=1, mean=(0.0,), std=(1.0,), channel_order="RGB")
    with pytest.raises(ValueError, match="takes 1 channel but the images are RGB; set channel_order='L'"):
        preprocess(rgb, grey_rgb_order)
    grey_l = Preprocessing(resolution=(8, 8), channels=1, mean=(0.0,), std=(1.0,), channel_order="L")
    pil_l = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb]) / 255.0
    np.testing.assert_allclose(preprocess(rgb, grey_l)[:, 0], pil_l, atol=0.5 / 255 + 1e-6)
    bgr = Preprocessing(resolution=(8, 8), channels=3, mean=(0.0,) * 3, std=(1.0,) * 3, channel_order="BGR")
    np.testing.assert_allclose(preprocess(rgb, bgr)[:, ::-1].transpose(0, 2, 3, 1), rgb / 255.0, atol=1e-7)
    l3 = Preprocessing(resolution=(8, 8), channels=3, mean=(0.0,) * 3, std=(1.0,) * 3, channel_order="L")
    with pytest.raises(ValueError, match="'L' means one grey channel"):
        preprocess(rgb, l3)
    with pytest.raises(ValueError, match="4 channels.*drop alpha"):
        preprocess(np.zeros((1, 8, 8, 4), np.uint8), bgr)
    with pytest.raises(ValueError, match=r"rank 2.*x\[None\]"):
        preprocess(np.zeros((8, 8), np.uint8), bgr)


@needs_fmnist
def test_preprocessing_for_a_zoo_model_feeds_it():
    import edgekit

    model = edgekit.create_model("ghostnet_1_0", num_classes=10, in_chans=1, resolution=64).eval()
    pre = preprocessing_for(model.default_cfg)
    assert pre.resolution == (64, 64) and pre.channels == 1 and pre.channel_order == "L"
    assert pre.mean == tuple(model.default_cfg["mean"]) and pre.std == tuple(model.default_cfg["std"])
    x = calibration_batch("fashion-mnist", pre, samples=4)
    with torch.no_grad():
        assert model(torch.from_numpy(x)).shape == (4, 10)
    with pytest.raises(ValueError, match=r"lacks \['std'\]"):
        preprocessing_for({"input_size": [3, 8, 8], "mean": [0, 0, 0]})


# ---- calibration batches ---------------------------------------------------------------------

@needs_fmnist
def test_calibration_batch_is_a_seeded_train_subset():
    a = calibration_batch("fashion-mnist", GREY32, samples=32, seed=7)
    assert a.shape == (32, 1, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, calibration_batch("fashion-mnist", GREY32, samples=32, seed=7))
    assert not np.array_equal(a, calibration_batch("fashion-mnist", GREY32, samples=32, seed=8))
    train = load_dataset("fashion-mnist", split="train")
    assert len(train) == 60_000
    idx = np.sort(np.random.default_rng(7).choice(60_000, 32, replace=False))
    np.testing.assert_array_equal(a, preprocess(train.images[idx], GREY32))
    nhwc = calibration_batch("fashion-mnist", GREY32, samples=32, seed=7, layout="NHWC")
    np.testing.assert_array_equal(nhwc, a.transpose(0, 2, 3, 1))


def test_calibration_batch_refuses_bad_data():
    good = np.zeros((5, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="holds no images"):
        calibration_batch(good[:0], GREY32, samples=1)
    with pytest.raises(ValueError, match="has 5 images but 6 calibration samples.*at most 5"):
        calibration_batch(good, GREY32, samples=6)
    nan = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    nan[3, 2, 1] = np.nan
    nan[4, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 non-finite values \(1 NaN, 1 Inf\), the first at index \(3, 2, 1\)"):
        calibration_batch(nan, GREY32, samples=2)
    with pytest.raises(ValueError, match=r"has 4 channels.*drop alpha with x\[..., :3\]"):
        calibration_batch(np.zeros((5, 8, 8, 4), np.uint8), RGB32, samples=2)
    with pytest.raises(ValueError, match=r"rank 2"):
        calibration_batch(np.zeros((8, 8), np.uint8), GREY32, samples=1)
    with pytest.raises(ValueError, match="samples 0 must be"):
        calibration_batch(good, GREY32, samples=0)
    with pytest.raises(ValueError, match="dtype int32"):
        calibration_batch(good.astype(np.int32), GREY32, samples=1)


def test_synthetic_batch_warns():
    with pytest.warns(SyntheticDataWarning, match="not from real data"):
        x = synthetic_batch(RGB32, samples=3, seed=0)
    assert x.shape == (3, 3, 32, 32) and np.isfinite(x).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(x, synthetic_batch(RGB32, samples=3, seed=0))


# ---- range estimators ------------------------------------------------------------------------

def gaussian_with_outliers(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=200_000)
    x[rng.choice(x.size, 20, replace=False)] = rng.choice([-1, 1], 20) * rng.uniform(30, 60, 20)
    return x


@pytest.mark.parametrize("symmetric", [False, True])
def test_clipping_estimators_clip_tighter_than_minmax(symmetric):
    x = gaussian_with_outliers()
    batches = {"act": np.array_split(x, 10)}
    lo_mm, hi_mm = ranges_for_arrays(batches, MinMax(), symmetric)["act"]
    assert (lo_mm, hi_mm) == ((-np.abs(x).max(), np.abs(x).max()) if symmetric else (x.min(), x.max()))
    for est in (Percentile(99.99), Entropy(), MSE()):
        lo, hi = ranges_for_arrays(batches, est, symmetric)["act"]
        assert lo_mm < lo < 0 < hi < hi_mm, est
        if isinstance(est, MSE):  # keeps most of the range (clipping 20 outliers at ~45 costs more MSE) ...
            err = quantization_mse(x, lo, hi, symmetric=symmetric)     # ... and loses less than minmax
            assert err < 0.9 * quantization_mse(x, lo_mm, hi_mm, symmetric=symmetric)
        else:
            assert hi - lo < 0.2 * (hi_mm - lo_mm), est
    lo, hi = ranges_for_arrays(batches, Percentile(99.9), symmetric)["act"]
    assert 3.0 < hi < 3.6 and -3.6 < lo < -3.0                         # the Gaussian's 99.9% point is 3.29


def test_mse_beats_minmax_on_heavy_tails():
    x = np.random.default_rng(4).standard_t(2, size=100_000)
    for symmetric in (False, True):
        mm = ranges_for_arrays({"x": [x]}, MinMax(), symmetric)["x"]
        best = ranges_for_arrays({"x": [x]}, MSE(), symmetric)["x"]
        err_mm, err_mse = (quantization_mse(x, *r, symmetric=symmetric) for r in (mm, best))
        assert err_mse < 0.95 * err_mm
        # a brute-force search over the real quantization error does no better than 1% below MSE()'s choice
        lo, hi = mm
        brute = min(quantization_mse(x, lo * a, hi * a, symmetric=symmetric) for a in np.linspace(0.01, 1, 400))
        assert err_mse <= 1.01 * brute


def test_percentile_of_a_known_distribution():
    x = np.random.default_rng(5).uniform(-1, 3, 400_000)
    lo, hi = ranges_for_arrays({"u": np.array_split(x, 40)}, Percentile(99.0))["u"]
    assert lo == pytest.approx(np.quantile(x, 0.01), abs=2e-3)
    assert hi == pytest.approx(np.quantile(x, 0.99), abs=2e-3)
    assert Percentile(100).compute(_observe(x), symmetric=False) == (x.min(), x.max())


def test_entropy_is_not_fooled_by_relu_zeros():
    x = np.maximum(np.random.default_rng(6).normal(size=200_000), 0)   # half exact zeros
    lo, hi = ranges_for_arrays({"relu": [x]}, Entropy())["relu"]
    assert lo == 0 and np.quantile(x, 0.999) < hi <= x.max()
    assert Entropy(bins=512, quant_levels=128).compute(_observe(x), symmetric=False)[1] <= x.max()


def test_degenerate_tensors_get_nonzero_ranges():
    for name in ("minmax", "percentile", "entropy", "mse"):
        est = method_from_name(name)
        for symmetric in (False, True):
            assert est.compute(_observe(np.zeros(100)), symmetric=symmetric) == (-1.0, 1.0)
            assert est.compute(_observe(np.full(10, 1e-9)), symmetric=symmetric) == (-1.0, 1.0)
            const = est.compute(_observe(np.full(10, 3.0)), symmetric=symmetric)
            assert const == ((-3.0, 3.0) if symmetric else (0.0, 3.0))
            assert est.compute(_observe(np.full(10, -2.0)), symmetric=False) == (-2.0, 0.0)
    obs = _observe(np.full(10, 2.0))                                    # a constant, then a wide batch
    obs.update(np.array([1e30, -3.0]))
    assert obs.histogram()[0].sum() == 12 and MinMax().compute(obs, symmetric=False) == (-3.0, 1e30)
    assert scale_zero_point(0.0, 3.0)[0] > 0
    np.testing.assert_array_equal(fake_quantize(np.array([0.0, 3.0]), 0.0, 3.0), [0.0, 3.0])


def test_nan_and_inf_are_refused():
    obs = RangeObserver("conv1")
    obs.update(np.ones((2, 3)))
    bad = np.ones((2, 3, 4), np.float32)
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"'conv1': batch 1 has 1 non-finite values \(1 NaN, 0 Inf\), the first "
                                         r"at index \(1, 2, 0\)"):
        obs.update(bad)
    with pytest.raises(ValueError, match="Inf"):
        ranges_for_arrays({"x": [np.array([1.0, np.inf])]}, "minmax")
    with pytest.raises(ValueError, match="seen no values"):
        MinMax().compute(RangeObserver(), symmetric=False)


def test_observer_memory_is_bounded_and_rebinning_exact():
    rng = np.random.default_rng(7)
    obs = RangeObserver("act", bins=1024)
    whole = []
    for i in range(500):                                               # the range grows many times
        x = rng.normal(scale=1 + i / 50, size=(4, 8, 16)).astype(np.float32)
        x[0, 0, :3] = 0.0
        obs.update(torch.from_numpy(x) if i % 2 else x)
        whole.append(x)
    whole = np.concatenate([w.ravel() for w in whole])
    counts, edges = obs.histogram()
    assert counts.shape == (1024,) and obs.count == whole.size == counts.sum() and obs.zeros == 1500
    assert (obs.min, obs.max) == (whole.min(), whole.max())
    # re-binning moved whole old bins: the counts below each edge are the data's (up to float ties)
    grid = obs._lo + obs._width * np.arange(1025)
    below = np.searchsorted(np.sort(whole), grid, side="left")
    assert np.abs(np.concatenate([[0], np.cumsum(counts)])[1:-1] - below[1:-1]).max() <= 2
    lo, hi = Percentile(99.0).compute(obs, symmetric=False)
    assert lo == pytest.approx(np.quantile(whole, 0.01), rel=0.02)
    assert hi == pytest.approx(np.quantile(whole, 0.99), rel=0.02)


def test_minmax_observes_without_a_histogram():
    """MinMax needs only the extremes, so ranges_for_arrays builds no histogram for it (the costly
    part of calibrating a 224 px network); the ranges are those of a full observer."""
    rng = np.random.default_rng(9)
    batches = [{"a": rng.normal(scale=1 + i, size=(8, 16)), "b": np.maximum(rng.normal(size=40), 0)} for i in range(4)]
    full = {}
    for k in ("a", "b"):
        obs = RangeObserver(k)
        for b in batches:
            obs.update(b[k])
        full[k] = MinMax().compute(obs, symmetric=False)
    assert ranges_for_arrays(iter(batches), "minmax") == full
    light = RangeObserver("a", histogram=False)
    light.update(batches[0]["a"])
    assert (light.min, light.max, light.count) == (batches[0]["a"].min(), batches[0]["a"].max(), 128)
    with pytest.raises(ValueError, match="'a': this observer keeps min / max only"):
        Percentile().compute(light, symmetric=False)
    with pytest.raises(ValueError, match="non-finite"):
        light.update(np.array([np.nan]))


def test_batch_forms_agree_and_method_names():
    rng = np.random.default_rng(8)
    batches = [{"a": rng.normal(size=100), "b": rng.uniform(size=50)} for _ in range(3)]
    as_iter = ranges_for_arrays(iter(batches), "percentile", True)
    as_dict = ranges_for_arrays({k: [b[k] for b in batches] for k in ("a", "b")}, Percentile(), True)
    assert as_iter == as_dict and list(as_iter) == ["a", "b"]
    assert [type(method_from_name(n)).__name__ for n in ("minmax", "percentile", "entropy", "mse")] == \
        ["MinMax", "Percentile", "Entropy", "MSE"]
    with pytest.raises(ValueError, match="'entorpy' is not one of minmax, percentile, entropy, mse.*'entropy'"):
        method_from_name("entorpy")
    with pytest.raises(ValueError, match="list of batches"):
        ranges_for_arrays({"a": np.zeros(3)}, "minmax")
    assert MSE(candidates=50).to_dict() == {"method": "mse", "candidates": 50}


@pytest.mark.parametrize("make, match", [
    (lambda: Percentile(50), r"percentile 50 must be in \(50, 100\]"),
    (lambda: Percentile(100.5), r"percentile 100.5 must be in \(50, 100\]"),
    (lambda: Entropy(bins=128, quant_levels=256), "bins 128 must be >= quant_levels 256"),
    (lambda: Entropy(quant_levels=1), "quant_levels 1 must be"),
    (lambda: MSE(candidates=1), "candidates 1 must be"),
    (lambda: RangeObserver(bins=8), "bins 8 must be"),
])
def test_configs_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _observe(x):
    obs = RangeObserver()
    obs.update(x)
    return obs
