"""Parity metrics against hand-computed values, failure messages, NaN handling."""
import json
import math
import re

import numpy as np
import pytest
import torch

from edgekit.calibration import fake_quantize
from edgekit.parity import ParityError, ParityReport, compare

REF = np.array([[3.0, 4.0], [1.0, 0.0]])
CAND = np.array([[3.0, 4.0], [0.0, 1.0]])


def test_metrics_match_hand_computed_values():
    r = compare(REF, CAND)
    assert r.n == 2 and r.shape == (2, 2)
    assert r.max_abs == 1.0 and r.mean_abs == 0.5                    # |diff| = 0, 0, 1, 1
    assert r.cosine == pytest.approx(0.5)                             # row 0: 1, row 1: (1,0).(0,1) = 0
    assert r.sqnr_db == pytest.approx(10 * math.log10(26 / 2))        # sum ref^2 = 9+16+1, noise = 1+1
    assert r.top1_agreement == 0.5 and r.top5_agreement is None       # 2 classes: no top-5
    assert r.worst == ((1, 0), 1.0, 0.0)
    assert r.finite


def test_top5_and_sqnr_on_logits():
    ref = np.array([[9, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 9]], dtype=np.float32)
    cand = ref.copy()
    cand[0, 0] = 4.5      # row 0: ref top-1 (class 0) falls to 4th place: top-1 wrong, top-5 right
    cand[1, 6] = -1       # row 1: ref top-1 (class 6) falls to last: both wrong
    r = compare(ref, cand)
    assert r.top1_agreement == 0.0 and r.top5_agreement == 0.5
    assert r.sqnr_db == pytest.approx(10 * math.log10(float((ref.astype(float) ** 2).sum()) / (4.5 ** 2 + 10 ** 2)))
    assert r.worst == ((1, 6), 9.0, -1.0)
    assert compare(ref, ref).top5_agreement == 1.0


def test_identical_outputs():
    x = np.random.default_rng(0).normal(size=(4, 10))
    r = compare(x, x.copy())
    assert r.sqnr_db == math.inf and r.max_abs == 0 and r.cosine == pytest.approx(1.0) and r.top1_agreement == 1.0
    r.check(min_sqnr_db=100, min_cosine=1.0, min_top1=1.0)
    assert "sqnr=infdB" in r.format()


def test_torch_and_numpy_agree_and_shapes_are_checked():
    ref = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    cand = ref + 0.01
    assert compare(ref, cand) == compare(ref.numpy(), cand.numpy())
    with pytest.raises(ValueError, match=r"reference shape \(3, 5\) and candidate shape \(5, 3\) differ"):
        compare(ref, cand.T)
    with pytest.raises(ValueError, match="nothing to compare"):
        compare(np.zeros((0, 3)), np.zeros((0, 3)))


def test_cosine_of_zero_samples_and_vectors():
    z = np.zeros((2, 3))
    assert compare(z, z).cosine == 1.0                                # both zero: identical
    assert compare(z, np.ones((2, 3))).cosine == 0.0                  # one zero: nothing in common
    assert compare(z, np.ones((2, 3))).sqnr_db == -math.inf
    v = compare(np.array([1.0, 0.0]), np.array([1.0, 1.0]))           # 1-D: one sample
    assert v.n == 1 and v.cosine == pytest.approx(1 / math.sqrt(2)) and v.top1_agreement is None


def test_nan_is_reported_not_hidden():
    cand = CAND.copy()
    cand[0, 1] = np.nan
    r = compare(REF, cand)
    assert not r.finite and r.nonfinite_candidate == 1 and r.nonfinite_reference == 0
    assert math.isnan(r.max_abs) and math.isnan(r.sqnr_db) and math.isnan(r.top1_agreement)
    assert r.worst[0] == (0, 1) and math.isnan(r.worst[2])
    assert "NONFINITE ref=0 cand=1" in r.format()
    with pytest.raises(ParityError, match=r"non-finite outputs \(reference 0, candidate 1 NaN/Inf values\)"):
        r.check()                                                     # no floor needed to fail
    assert compare(np.array([[np.inf, 1.0]]), np.ones((1, 2))).nonfinite_reference == 1


def test_check_raises_a_readable_diff():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(16, 10))
    cand = fake_quantize(ref, -1.0, 1.0)                              # clipped at +-1: poor parity
    r = compare(ref, cand)
    with pytest.raises(ParityError) as e:
        r.check(min_sqnr_db=35, min_cosine=0.5)
    msg = str(e.value)
    lines = msg.splitlines()
    assert lines[0] == f"parity check failed: sqnr_db {r.sqnr_db:.6g} < floor 35"
    for key in ("max_abs", "mean_abs", "cosine", "sqnr_db", "top1_agreement", "top5_agreement", "worst element"):
        assert key in msg
    assert [ln for ln in lines if "FAILED" in ln] == [f"  sqnr_db         {r.sqnr_db:.6g}   (floor 35)  FAILED"]
    idx, rv, cv = r.worst
    assert f"{list(idx)}: reference {rv:.7g}, candidate {cv:.7g}" in msg
    assert abs(rv) == np.abs(ref).max()                               # the largest value is clipped most
    assert isinstance(e.value, AssertionError)
    r.check(min_sqnr_db=r.sqnr_db - 0.1, min_cosine=0.5)              # floors met: no exception
    with pytest.raises(ParityError, match="top1_agreement .* < floor 1"):
        compare(REF, CAND).check(min_top1=1.0)


def test_floors_are_validated():
    r = compare(REF, CAND)
    with pytest.raises(ValueError, match=r"min_top1 needs \(N, classes\) logits; these outputs have shape \(4,\)"):
        compare(np.arange(4.0), np.arange(4.0)).check(min_top1=0.9)
    with pytest.raises(ValueError, match=r"min_top1 99 must be a share in \[0, 1\]"):
        r.check(min_top1=99)
    with pytest.raises(ValueError, match=r"min_cosine 2 must be in \[-1, 1\]"):
        r.check(min_cosine=2)


def test_to_dict_is_strict_json_and_round_trips():
    for r in (compare(REF, CAND), compare(REF, REF), compare(REF, np.full((2, 2), np.nan))):
        d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
        back = ParityReport.from_dict(d)
        assert back.format() == r.format()
    assert compare(REF, REF).to_dict()["sqnr_db"] == "inf"
    line = compare(REF, CAND).format()
    assert "\n" not in line and line.startswith("n=2 max_abs=1 mean_abs=0.5 cos=0.50000 sqnr=11.1dB top1=50.0%")


def test_logits_with_a_common_offset_warn_that_the_sqnr_is_not_meaningful():
    rng = np.random.default_rng(3)
    ref = 100.0 + 0.01 * rng.normal(size=(64, 10))                   # one large offset, tiny class differences
    cand = ref + 0.02 * rng.normal(size=ref.shape)                    # noise larger than the class differences
    r = compare(ref, cand)
    assert r.sqnr_db > 70 and r.centered_sqnr_db < 5 and r.top1_agreement < 0.5
    assert r.warning.startswith(f"SQNR {r.sqnr_db:.1f} dB is not meaningful for these logits: with each sample's "
                                f"mean over classes removed (what decides top-1) it is {r.centered_sqnr_db:.1f} dB")
    assert "\n" not in r.warning
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["warning"] == r.warning and ParityReport.from_dict(d).warning == r.warning
    # the same class differences without the offset: plain and centered SQNR agree, no warning needed
    # beyond top-1 (the noise is as large as the signal: 0 dB is honest)
    plain = compare(ref - 100.0, cand - 100.0)
    assert abs(plain.sqnr_db - plain.centered_sqnr_db) < 1 and plain.warning is None


def test_low_top1_at_a_high_sqnr_warns_and_a_normal_case_does_not():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(32, 10))
    ref[:, 0] = 3.0
    ref[:, 1] = 3.0 + 0.001 * rng.uniform(0.5, 1, size=32)            # classes 0 and 1 all but tied on top
    cand = ref.copy()
    cand[:, 0], cand[:, 1] = ref[:, 1], ref[:, 0]                      # the tie goes the other way
    r = compare(ref, cand)
    assert r.sqnr_db > 40 and r.top1_agreement < 0.5 and abs(r.sqnr_db - r.centered_sqnr_db) < 3
    assert "top-1 agrees on only" in r.warning and "below the noise" in r.warning
    fine = compare(ref, ref + 1e-5 * rng.normal(size=ref.shape))      # noise below even the tie: top-1 agrees
    assert fine.top1_agreement == 1.0 and fine.warning is None
    untied = rng.normal(size=(32, 10))
    ok = compare(untied, untied + 0.01 * rng.normal(size=untied.shape))
    assert ok.warning is None and ok.top1_agreement > 0.9 and abs(ok.sqnr_db - ok.centered_sqnr_db) < 1
    assert compare(np.arange(4.0), np.arange(4.0) + 1e-3).centered_sqnr_db is None   # not logits
    assert compare(REF, np.full((2, 2), np.nan)).warning is None                    # NaN says it already



class _Chaotic(torch.nn.Module):
    """Twenty steps of the logistic map ``4 y (1 - y)`` after two convolutions: a difference of one
    rounding step in the convolutions (onnxruntime and PyTorch sum in other orders) doubles at each
    step, as a deep random network amplifies rounding (fbnetv3_d at 96 px: about 21 dB), but small.
    On an all-zero input (the exporter's own example) the map is bypassed, so only images show it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = torch.sigmoid(self.c2(torch.relu(self.c1(x))))
        z = y
        for _ in range(20):
            z = 3.99 * z * (1 - z)
        image = (x.abs().amax((1, 2, 3), keepdim=True) > 0).to(x.dtype)
        return self.fc((image * z + (1 - image) * y).mean((2, 3)))


@pytest.mark.slow
def test_fp32_refusal_says_when_the_network_amplifies_float_rounding(tmp_path):
    """The file is far from PyTorch, and so is PyTorch's own float32 from float64: the refusal says
    it is the network, not the converter, with both figures, and nothing is written."""
    from edgekit.export import ExportSettings, export

    with pytest.raises(ValueError) as e:
        export(_Chaotic(), name="d", out=tmp_path, input_size=(1, 32, 32), preset="none",
               settings=ExportSettings(formats=("onnx",), precisions=("fp32",), holdout=32, parallel=False))
    last = str(e.value).splitlines()[-1]
    assert last.startswith("PyTorch's own float32 output is ") and "the network amplifies float rounding" in last
    own, file = (float(v) for v in re.findall(r"([\d.-]+) dB", last))
    assert own < 60 and file >= own - 15
    assert not list(tmp_path.iterdir())
