"""Artifact files: manifest validation, atomic writes, corrupt or truncated files caught."""
import json
import os
import subprocess

import numpy as np
import pytest

from edgekit.exporters.artifact import (Calibration, Manifest, Preprocessing, TensorInfo, load_artifact,
                                        manifest_path, sha256_bytes, write_artifact,
                                        write_artifacts)

BYTES = b"\x00model-bytes\x01" * 100


def manifest(**kw):
    base = dict(model="ghostnet_1_0", format="tflite", precision="int8",
                inputs=(TensorInfo("input", (1, 64, 64, 1), "int8", "NHWC", 0.02, -3),),
                outputs=(TensorInfo("logits", (1, 10), "int8", "NC", 0.1, 5),),
                preprocessing=Preprocessing((64, 64), 1, (0.286,), (0.353,), channel_order="L"),
                file_sha256=sha256_bytes(BYTES),
                calibration=Calibration("fashion-mnist", 256, "minmax"))
    base.update(kw)
    return Manifest(**base)


def test_write_and_load_round_trip(tmp_path):
    art = write_artifact(tmp_path / "m.tflite", BYTES, manifest())
    assert art.manifest_path == tmp_path / "m.manifest.json"
    again = load_artifact(tmp_path / "m.tflite")
    assert again.manifest == art.manifest
    assert json.loads(art.manifest_path.read_text())["schema_version"] == 1


def test_truncated_or_corrupted_file_is_caught(tmp_path):
    path = tmp_path / "m.tflite"
    write_artifact(path, BYTES, manifest())
    path.write_bytes(BYTES[:-7])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_artifact(path)


def test_corrupt_manifest_is_caught(tmp_path):
    path = tmp_path / "m.tflite"
    write_artifact(path, BYTES, manifest())
    manifest_path(path).write_text('{"schema_version": 1, "model": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_artifact(path)
    manifest_path(path).unlink()
    with pytest.raises(ValueError, match="has no manifest"):
        load_artifact(path)


@pytest.mark.parametrize("kw, needle", [
    (dict(precision="int8-dynamic"), "precision 'int8-dynamic'"),
    (dict(format="pb"), "format 'pb'"),
    (dict(precision="mixed"), "must list its float layers"),
    (dict(calibration=None), "needs its calibration"),
    (dict(file_sha256="abc"), "not a sha256"),
    (dict(inputs=(TensorInfo("input", (1, 3), "int8", "NC", 0.1, 0),), outputs=()), "at least one input"),
])
def test_manifest_refuses_inconsistent_fields(kw, needle):
    with pytest.raises(ValueError, match=needle):
        manifest(**kw)


def test_quantized_tensor_needs_scale_and_zero_point():
    with pytest.raises(ValueError, match="needs scale and zero_point"):
        TensorInfo("input", (1, 3), "int8", "NC")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".manifest.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(path, BYTES, manifest(format="onnx"))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_created_a_file_refused_an_unwritable_one_too(tmp_path):
    write_artifact(tmp_path / "new" / "dir" / "m.onnx", BYTES, manifest(format="onnx"))
    assert load_artifact(tmp_path / "new" / "dir" / "m.onnx").manifest == manifest(format="onnx")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"file is a file, not a directory; pass another --out"):
        write_artifact(tmp_path / "file" / "sub" / "m.onnx", BYTES, manifest(format="onnx"))
    if os.geteuid() != 0:  # root writes anywhere; the check is for everyone else
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="not writable"):
            write_artifact(ro / "m.onnx", BYTES, manifest(format="onnx"))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (mounting needs root, as the test command runs on the CI machine)."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs needs root; run `make test` as root")
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True, timeout=30)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_a_disk_that_fills_during_the_writes_leaves_nothing(small_disk):
    """Four 600 kB files (an export's two formats x two precisions) for 2 MiB: three fit."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        data = rng.bytes(600_000)
        files.append((small_disk / "out" / f"m{i}.tflite", data, manifest(file_sha256=sha256_bytes(data))))
    with pytest.raises(ValueError) as e:
        write_artifacts(files)
    assert str(e.value) == (f"no space left on {small_disk / 'out'}: need about 2.4 MB; free space or choose "
                            f"another --out")
    assert list(small_disk.iterdir()) == []  # no file, no temporary, not the directory it made
    (small_disk / "out").mkdir()
    write_artifacts(files[:3])  # what fits is written, all of it
    assert sorted(p.name for p in (small_disk / "out").iterdir()) == sorted(
        [f"m{i}.tflite" for i in range(3)] + [f"m{i}.manifest.json" for i in range(3)])


def test_sha_mismatch_refused(tmp_path):
    with pytest.raises(ValueError, match="does not match the model bytes"):
        write_artifact(tmp_path / "m.onnx", BYTES + b"x", manifest(format="onnx"))


def test_tensor_info_lays_images_out_as_the_file_takes_them():
    import numpy as np
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # N, C, H, W
    nhwc = TensorInfo("input", (1, 4, 5, 3), layout="NHWC")
    got = nhwc.from_nchw(x)
    assert got.shape == (2, 4, 5, 3) and got.flags.c_contiguous and got[1, 2, 3, 0] == x[1, 0, 2, 3]
    assert nhwc.to_nchw(got).shape == x.shape and np.array_equal(nhwc.to_nchw(got), x)
    nchw = TensorInfo("input", (1, 3, 4, 5), layout="NCHW")
    assert np.array_equal(nchw.from_nchw(x), x) and nchw.to_nchw(x) is x
    logits = np.zeros((2, 10), np.float32)
    assert TensorInfo("logits", (1, 10), layout="NC").to_nchw(logits) is logits
