"""The FBNet v1 search space, the LUT format, its build plan (resume) and the latency predictor."""
from __future__ import annotations

import json
import math

import pytest
import torch

from edgekit.lut import (CANDIDATES, FBNetV1Space, Lut, LutError, LutMismatchError, NetworkUnit, OrtTimer,
                         TorchTimer, build_lut, fit_overhead, get_space, load_lut, local_fingerprint, mape,
                         measure_networks, network_signatures, plan, predict, save_lut)
from edgekit.devices.base import DeviceError, open_model
from edgekit.devices.local import LocalDevice
from edgekit.devices.stats import Protocol
from edgekit.devices.store import ResultStore
from edgekit.lut import DeviceTimer, accuracy, build_on_device, check_lut, kendall, plot_check, sample_checks, spearman
from edgekit.models import ArchSpec, BlockSpec, from_arch
from edgekit.models.fbnet import fbnet_arch, scale_width

torch.set_num_threads(1)

SMALL = dict(resolution=32, width=0.25, in_chans=1, num_classes=10)
# four layers, same candidates: what a LUT build or a search can afford inside a test
TINY = FBNetV1Space(resolution=16, width=0.25, in_chans=1, num_classes=10, head_channels=256,
                    stages=((16, 1, 1), (24, 2, 2), (32, 1, 2)), groups=None)
# TINY's first two layers: the onnxruntime LUT exports every block, and its point does not need four
TWO_LAYERS = FBNetV1Space(resolution=16, width=0.25, in_chans=1, num_classes=10, head_channels=256,
                          stages=((16, 1, 1), (24, 1, 2)), groups=None)


def _torch_lut(space: FBNetV1Space, **kw) -> Lut:
    timer = TorchTimer(runs=5, warmup=1)
    return build_lut(space, timer, device=local_fingerprint(timer.runtime, 1), format="torch", precision="fp32",
                     threads=1, **kw)


@pytest.fixture(scope="module")
def tiny_lut() -> Lut:
    return _torch_lut(TINY)


# ---- space ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("knobs", [{}, SMALL], ids=["imagenet", "fashion-mnist"])
def test_space_has_22_layers_of_9_candidates(knobs):
    space = get_space("fbnet-v1", **knobs)
    assert len(space.layers) == 22
    assert len(CANDIDATES) == 9
    for layer in space.layers:
        cands = space.candidates(layer)
        assert len(set(cands)) == 9
        assert {(b.kernel, b.expansion, b.groups) for b in cands if b.type == "ir"} == {
            (3, 1, 1), (3, 1, 2), (3, 3, 1), (3, 6, 1), (5, 1, 1), (5, 1, 2), (5, 3, 1), (5, 6, 1)}
    if not knobs:  # paper Table 1
        assert [l.out_channels for l in space.layers] == [16] + [24] * 4 + [32] * 4 + [64] * 4 + [112] * 4 + [184] * 4 + [352]
        assert [l.stride for l in space.layers if l.block == 1] == [1, 2, 2, 2, 1, 2, 1]
        assert [l.in_shape[1] for l in (space.layers[0], space.layers[-1])] == [112, 7]


@pytest.mark.parametrize("seed", range(5))
def test_sampled_points_build_and_round_trip(seed):
    space = get_space("fbnet-v1", **SMALL)
    choices = space.sample(seed)
    assert choices == space.sample(seed)  # seeded
    spec = space.spec(choices)
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert space.spec_to_choices(ArchSpec.from_json(spec.to_json())) == choices
    net = from_arch(spec, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_sampling_covers_every_candidate():
    space = get_space("fbnet-v1", **SMALL)
    seen = {c for seed in range(10) for c in space.sample(seed)}
    assert seen == set(CANDIDATES)


@pytest.mark.parametrize("name", ["fbnet_a", "fbnet_b", "fbnet_c"])
def test_zoo_fbnets_are_points_of_the_space(name):
    space = get_space("fbnet-v1", head_channels=1504 if name == "fbnet_a" else 1984)
    choices = space.spec_to_choices(fbnet_arch(name))
    assert space.spec(choices, name=name) == fbnet_arch(name)
    # width scaling of the space matches the zoo's
    small = get_space("fbnet-v1", width=0.5, head_channels=space.head_channels)
    assert small.spec(choices, name=name) == scale_width(fbnet_arch(name), 0.5)


def test_out_of_space_spec_names_the_layer():
    space = get_space("fbnet-v1", **SMALL)
    spec = space.spec(space.sample(0))
    blocks = list(spec.blocks)
    blocks[6] = BlockSpec("ir", blocks[6].out_channels, kernel=7, stride=1, expansion=6.0)
    with pytest.raises(ValueError) as e:
        space.spec_to_choices(spec.replace(stages=(tuple(blocks),)))
    msg = str(e.value)
    assert "layer 7 (stage 3 block 2): k7 e6 is not a candidate" in msg
    assert "candidates are k3 e1, k3 e1 g2, k3 e3, k3 e6, k5 e1, k5 e1 g2, k5 e3, k5 e6, skip" in msg


def test_out_of_space_macro_is_named():
    with pytest.raises(ValueError, match="head_channels"):
        get_space("fbnet-v1").spec_to_choices(fbnet_arch("fbnet_a"))
    with pytest.raises(ValueError, match="resolution 224 differs"):
        get_space("fbnet-v1", resolution=192).spec_to_choices(fbnet_arch("fbnet_c"))
    with pytest.raises(ValueError, match="22 layers"):
        get_space("fbnet-v1").spec_to_choices(fbnet_arch("fbnet_c").replace(stages=fbnet_arch("fbnet_c").stages[:4]))


def test_bad_choices_and_knobs_are_refused():
    space = get_space("fbnet-v1", **SMALL)
    with pytest.raises(ValueError, match="did you mean k5_e6"):
        space.spec(("k5_e7",) + space.sample(0)[1:])
    with pytest.raises(ValueError, match="needs 22 choices"):
        space.spec(space.sample(0)[:3])
    with pytest.raises(ValueError, match="unknown search space 'fbnet-v3'; did you mean fbnet-v2, fbnet-v1"):
        get_space("fbnet-v3")
    with pytest.raises(ValueError, match="--resolutions is fbnet-v2's"):
        get_space("fbnet-v1", resolutions=(32, 24))
    with pytest.raises(ValueError, match="resolution 0 must be an int >= 1"):
        get_space("fbnet-v1", resolution=0)
    with pytest.raises(ValueError, match="width"):
        get_space("fbnet-v1", width=0)


def test_signatures_are_canonical_and_enumerated():
    space = get_space("fbnet-v1", **SMALL)
    sigs = space.distinct_signatures()
    keys = [s.key for s in sigs]
    assert len(keys) == len(set(keys)) == 104  # 108 (candidate, shape) pairs - 6 identity skips + stem + head
    assert keys[0] == "stem:k3:relu|in=1x32x32|out=8|s=2"
    assert "ir:k5:e6:g1:relu|in=8x16x16|out=8|s=2" in keys
    assert len(space.distinct_signatures(include_identity=True)) == 110
    for seed in range(3):  # the space's signatures are the ones a network walk gives
        choices = space.sample(seed)
        walked = network_signatures(space.spec(choices), in_chans=1, num_classes=10)
        assert [s.key for s in walked] == [s.key for s in space.signatures(choices)]


def test_signature_modules_take_their_inputs():
    for sig in TINY.distinct_signatures():
        with torch.no_grad():
            y = sig.module()(sig.example())
        assert tuple(y.shape[1:]) == (sig.out_shape if sig.kind != "head" else (TINY.num_classes,))


# ---- LUT format ----------------------------------------------------------------------------------

def test_lut_round_trips_and_predict_sums(tmp_path, tiny_lut):
    path = save_lut(tiny_lut, tmp_path / "lut.json")
    lut = load_lut(path, format="torch", precision="fp32", threads=1, device={"device": "local"})
    assert lut == tiny_lut
    for seed in range(4):
        choices = TINY.sample(seed)
        pred = predict(TINY.spec(choices), lut)
        expect = sum(lut.entries[s.key] for s in TINY.signatures(choices) if not s.is_identity)
        assert pred.plain_ms == pytest.approx(expect, rel=1e-12)
        assert len(pred.blocks) == len(TINY.layers) + 2
        assert pred.fitted_ms is None  # no networks measured, no overhead model
    assert predict(TINY.spec(("skip",) * 4), lut).plain_ms < predict(TINY.spec(("k5_e6",) * 4), lut).plain_ms


def test_predict_names_a_missing_entry(tiny_lut):
    spec = TINY.spec(("k3_e3",) * 4)
    key = TINY.signatures(("k3_e3",) * 4)[2].key
    partial = tiny_lut.replace(entries={k: v for k, v in tiny_lut.entries.items() if k != key})
    with pytest.raises(LutError, match=r"block 2 signature .*lut plan"):
        predict(spec, partial)


def test_mismatched_lut_is_refused(tmp_path, tiny_lut):
    path = save_lut(tiny_lut, tmp_path / "lut.json")
    with pytest.raises(LutMismatchError, match="format is 'torch', expected 'tflite'"):
        load_lut(path, format="tflite")
    with pytest.raises(LutMismatchError, match="precision is 'fp32', expected 'int8'.*threads is 1, expected 4"):
        load_lut(path, precision="int8", threads=4)
    with pytest.raises(LutMismatchError, match="device cpu is .*expected 'Cortex-A76'"):
        load_lut(path, device={"cpu": "Cortex-A76"})
    with pytest.raises(LutMismatchError, match="device device is 'local', expected 'ssh://pi@rpi'"):
        load_lut(path, device="ssh://pi@rpi")
    with pytest.raises(LutMismatchError, match="statistic is 'median', expected 'min'.*statistics"):
        load_lut(path, statistic="min")


@pytest.mark.parametrize("corrupt, message", [
    (lambda text, d: text[: len(text) // 2], "does not parse"),
    (lambda text, d: json.dumps([1, 2]), "must be a JSON object"),
    (lambda text, d: json.dumps({**d, "schema_version": 99}), "schema_version 99 is not supported"),
    (lambda text, d: json.dumps({**d, "schema": "other"}), "not an edgekit LUT"),
    (lambda text, d: json.dumps({k: v for k, v in d.items() if k != "entries"}), r"lacks field\(s\) \['entries'\]"),
    (lambda text, d: json.dumps({**d, "entries": {**d["entries"], next(iter(d["entries"])): -1.0}}), "latency -1.0"),
    (lambda text, d: json.dumps({**d, "entries": {**d["entries"], next(iter(d["entries"])): math.nan}}), "latency nan"),
    (lambda text, d: json.dumps({**d, "entries": {"conv3x3": 1.0}}), "not a block signature"),
    (lambda text, d: json.dumps({**d, "unit": "us"}), "unit 'us' must be 'ms'"),
    (lambda text, d: json.dumps({**d, "threads": 0}), "threads 0"),
    (lambda text, d: json.dumps({**d, "device": {}}), "fingerprint"),
    (lambda text, d: json.dumps({**d, "typo_field": 1}), "unknown field"),
    (lambda text, d: json.dumps({**d, "statistic": "mean"}), "statistic 'mean' must be one of"),
])
def test_corrupt_lut_is_refused(tmp_path, tiny_lut, corrupt, message):
    text = tiny_lut.to_json()
    path = tmp_path / "lut.json"
    path.write_text(corrupt(text, json.loads(text)))
    with pytest.raises(LutError, match=message) as e:
        load_lut(path)
    assert str(path) in str(e.value) and "corrupt" in str(e.value)


def test_missing_lut_file_says_how_to_make_one(tmp_path):
    with pytest.raises(LutError, match="does not exist; build one with `edgekit lut build`"):
        load_lut(tmp_path / "nope.json")


# ---- build plan and resume -----------------------------------------------------------------------

class _Recording:
    """A real timer that records what it measured and can die after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None):
        self.timer = TorchTimer(runs=3, warmup=1)
        self.fail_after, self.calls, self.measured = fail_after, 0, []

    def __call__(self, units):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("connection to the device lost")
        self.calls += 1
        self.measured += [u.key for u in units]
        return self.timer(units)


def test_resumed_build_measures_only_what_is_missing(tmp_path):
    out = tmp_path / "lut.json"
    fp = local_fingerprint("torch", 1)
    first = _Recording(fail_after=2)
    with pytest.raises(RuntimeError, match="connection"):
        build_lut(TINY, first, device=fp, format="torch", precision="fp32", threads=1, out=out, chunk=5)
    stored = load_lut(out)
    assert sorted(stored.entries) == sorted(first.measured) and len(first.measured) == 10
    missing = plan(TINY, stored)
    assert len(missing) == len(TINY.distinct_signatures()) - 10

    second = _Recording()
    lut = build_lut(TINY, second, device=fp, format="torch", precision="fp32", threads=1, out=out, chunk=5)
    assert set(second.measured).isdisjoint(first.measured)
    assert sorted(second.measured) == sorted(s.key for s in missing)
    assert {k: lut.entries[k] for k in stored.entries} == dict(stored.entries)  # stored values kept
    assert plan(TINY, load_lut(out)) == []

    third = _Recording()
    build_lut(TINY, third, device=fp, format="torch", precision="fp32", threads=1, out=out)
    assert third.calls == 0


def test_resume_refuses_another_target_or_space(tmp_path, tiny_lut):
    out = save_lut(tiny_lut, tmp_path / "lut.json")
    timer = TorchTimer(runs=2, warmup=0)
    with pytest.raises(LutMismatchError, match="format is 'torch', expected 'onnx'"):
        build_lut(TINY, timer, device=dict(tiny_lut.device), format="onnx", precision="fp32", threads=1, out=out)
    with pytest.raises(LutMismatchError, match="statistic is 'median', expected 'min'"):
        build_lut(TINY, timer, device=dict(tiny_lut.device), format="torch", precision="fp32", threads=1, out=out,
                  statistic="min")
    other = get_space("fbnet-v1", **SMALL)
    with pytest.raises(LutError, match="another space"):
        build_lut(other, timer, device=dict(tiny_lut.device), format="torch", precision="fp32", threads=1, out=out)


def test_measure_must_return_one_latency_per_block():
    with pytest.raises(ValueError, match="returned 0 latencies for 8 blocks"):
        build_lut(TINY, lambda units: [], device={"device": "local"}, format="torch", precision="fp32", threads=1)


# ---- overhead model ------------------------------------------------------------------------------

def test_fit_overhead_recovers_a_line_and_refuses_degenerate_data():
    model = fit_overhead([(1.0, 2.3), (2.0, 3.8), (4.0, 6.8)])
    assert (model.a_ms, model.b) == (pytest.approx(0.8), pytest.approx(1.5))
    assert mape([2.0], [2.0]) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        fit_overhead([(1.0, 1.0)])
    with pytest.raises(ValueError, match="different plain sums"):
        fit_overhead([(1.0, 1.0), (1.0, 2.0)])


def test_measure_networks_stores_networks_and_fit(tiny_lut):
    lut = measure_networks(tiny_lut, TINY, TorchTimer(runs=5, warmup=1), samples=4)
    assert len(lut.networks) == 4 and lut.overhead["n"] == 4
    pred = predict(TINY.spec(TINY.sample(9)), lut)
    assert pred.fitted_ms == pytest.approx(lut.overhead["a_ms"] + lut.overhead["b"] * pred.plain_ms)
    assert Lut.from_json(lut.to_json()) == lut


@pytest.mark.slow
def test_onnxruntime_lut_and_overhead_fit_reduce_error(tmp_path):
    """ONNX fp32 blocks timed in onnxruntime: the plain sum counts the per-session run cost once per
    block, so it misses whole-network latency; the linear overhead fit (on other networks) corrects it.
    Two layers (19 blocks, each an ONNX export): measured 65-190 % plain against 20-30 % fitted."""
    timer = OrtTimer(runs=30, warmup=5)
    out = tmp_path / "ort.json"
    lut = build_lut(TWO_LAYERS, timer, device=local_fingerprint(timer.runtime, 1), format="onnx", precision="fp32",
                    threads=1, out=out)
    assert plan(TWO_LAYERS, load_lut(out, format="onnx")) == []
    lut = measure_networks(lut, TWO_LAYERS, timer, samples=8, seed=1)
    held_out = [TWO_LAYERS.sample(1000 + i) for i in range(5)]
    measured = timer([NetworkUnit(TWO_LAYERS.spec(c, name=f"h{i}"), 1, 10) for i, c in enumerate(held_out)])
    preds = [predict(TWO_LAYERS.spec(c), lut) for c in held_out]
    plain = mape([p.plain_ms for p in preds], measured)
    fitted = mape([p.fitted_ms for p in preds], measured)
    assert fitted < plain, (plain, fitted, lut.overhead)


# ---- measured through the device runners (exported files on a Device) ---------------------------

# two layers at the Fashion-MNIST scale: 19 signatures, each a TFLite int8 export + a device run
MICRO = FBNetV1Space(resolution=32, width=0.25, in_chans=1, num_classes=10, head_channels=64,
                     stages=((16, 1, 1), (24, 1, 2)), groups=None)
QUICK = Protocol(runs=10, warmup=2, max_runs=10)


class _DyingDevice:
    """The local device, losing its connection after ``runs`` runs."""

    def __init__(self, runs: int):
        self.inner, self.left, self.address = LocalDevice(), runs, "local"

    def run(self, model, inputs, *, protocol=QUICK):
        if self.left == 0:
            raise DeviceError("local", "connect", "connection lost")
        self.left -= 1
        return self.inner.run(model, inputs, protocol=protocol)


def _device_timer(work, store, **kw) -> DeviceTimer:
    return DeviceTimer(MICRO, work_dir=work, store=store, protocol=QUICK, calib_samples=16, run_samples=2, **kw)


@pytest.fixture(scope="module")
def device_build(tmp_path_factory):
    """A TFLite int8 LUT built through LocalDevice: cut off after 6 runs, then resumed, then resumed again."""
    tmp = tmp_path_factory.mktemp("device-lut")
    out, work, store = tmp / "lut.json", tmp / "work", ResultStore(tmp / "results.db")
    first = _device_timer(work, store, device=_DyingDevice(6))
    with pytest.raises(DeviceError, match="connection lost"):
        build_on_device(MICRO, first, out=out, chunk=3)
    stored = load_lut(out)
    second = _device_timer(work, store)
    lut = build_on_device(MICRO, second, out=out, chunk=3)
    third = _device_timer(work, store)
    again = build_on_device(MICRO, third, out=out, chunk=3)
    return dict(out=out, work=work, store=store, first=first, stored=stored, second=second, lut=lut, third=third,
                again=again)


@pytest.mark.slow
def test_device_lut_has_every_entry_measured_on_the_local_device(device_build):
    lut, store = device_build["lut"], device_build["store"]
    assert (lut.format, lut.precision, lut.threads) == ("tflite", "int8", 1)
    assert sorted(lut.entries) == sorted(s.key for s in MICRO.distinct_signatures())
    assert all(ms > 0 for ms in lut.entries.values())
    rows = store.query(device="local", format="tflite", precision="int8")
    assert len(rows) == len(lut.entries)  # one stored result per measured unit, none twice
    fp = rows[0]["fingerprint"]
    assert dict(lut.device) == fp and fp["device"] == "local" and fp["runtime"] == "ai_edge_litert"
    artifact = open_model(rows[0]["artifact_path"])  # written with its manifest, sha256 verified
    assert artifact.manifest.calibration.dataset == "fashion-mnist" and artifact.precision == "int8"
    assert artifact.manifest.inputs[0].dtype == "int8"


@pytest.mark.slow
def test_resumed_device_build_measures_nothing_already_stored(device_build):
    first, stored, second, third = (device_build[k] for k in ("first", "stored", "second", "third"))
    assert len(stored.entries) == 6 and sorted(u.key for u in first.log) == sorted(stored.entries)
    measured = [u.key for u in second.log]
    assert set(measured).isdisjoint(stored.entries)
    assert sorted(measured) == sorted(s.key for s in plan(MICRO, stored))
    assert sum(u.reused for u in second.log) == 1  # the file exported before the connection died
    assert {k: device_build["lut"].entries[k] for k in stored.entries} == dict(stored.entries)
    assert third.log == [] and device_build["again"] == device_build["lut"]


@pytest.mark.slow
def test_lut_check_reports_metrics_and_refuses_another_target(device_build, tmp_path, capsys):
    lut, store = device_build["lut"], device_build["store"]
    timer = _device_timer(tmp_path / "work", store, expect=lut.device)
    report = check_lut(lut, timer, samples=5, seed=3, fit=2)
    assert [n["role"] for n in report["networks"]] == ["fit"] * 2 + ["held-out"] * 3
    assert all(n["measured_ms"] > 0 and n["plain_ms"] > 0 for n in report["networks"])
    for part in (report["plain"], report["held_out"]["plain"], report["held_out"]["fitted"]):
        assert 0 <= part["within_5pct"] <= part["within_10pct"] <= 1 and part["mape"] >= 0
        assert -1 <= part["spearman"] <= 1 and -1 <= part["kendall"] <= 1
    assert report["plain"]["n"] == 5 and report["held_out"]["fitted"]["n"] == 3
    assert [u.key.rsplit(":", 1)[0] for u in timer.log] == [f"network:check-3-{i}" for i in range(5)]
    assert sample_checks(MICRO, 5, 3) == [tuple(n["choices"]) for n in report["networks"]]
    png = plot_check(report, tmp_path / "check.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from edgekit.cli import main
    assert main(["lut", "check", "--lut", str(device_build["out"]), "--precision", "fp32", "--samples", "2"]) == 2
    assert "precision is 'int8', expected 'fp32'" in capsys.readouterr().err
    assert main(["lut", "check", "--lut", str(device_build["out"]), "--threads", "2", "--samples", "2"]) == 2
    assert "threads is 1, expected 2" in capsys.readouterr().err
    assert lut.statistic == "min"  # the device timer's default
    with pytest.raises(LutMismatchError, match="statistic is 'min', expected 'median'"):
        check_lut(lut, _device_timer(tmp_path / "work", store, expect=lut.device, statistic="median"), samples=2)
    elsewhere = lut.replace(device={**lut.device, "cpu_model": "Cortex-A76"})
    with pytest.raises(LutMismatchError, match="cpu_model is .* the LUT has 'Cortex-A76'"):
        check_lut(elsewhere, _device_timer(tmp_path / "work", store, expect=elsewhere.device), samples=2, fit=2)


def test_rank_correlations_and_accuracy():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman([1, 1], [1, 2]) is None and kendall([1], [1]) is None
    m = accuracy([1.04, 2.19, 2.9], [1.0, 2.0, 3.0])
    assert (m["within_5pct"], m["within_10pct"]) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert m["mape"] == pytest.approx(100 * (0.04 + 0.095 + 1 / 30) / 3)


@pytest.mark.slow
def test_units_exported_ahead_by_two_workers_are_the_files_one_process_writes(device_build, tmp_path):
    store = ResultStore(tmp_path / "results.db")
    units = MICRO.distinct_signatures()[:4]
    timer = _device_timer(tmp_path / "two", store, workers=2)
    ms = timer(units)
    assert len(ms) == 4 and all(m > 0 for m in ms)
    assert [u.key for u in timer.log] == [u.key for u in units]
    assert all(not u.reused and u.export_s > 0 for u in timer.log)  # exported for this build, by prepare
    one = _device_timer(device_build["work"], store)  # the module's build: every unit, in this process
    for unit in units:
        path, _, reused = one.exporter.artifact(unit)
        assert reused and path.read_bytes() == (tmp_path / "two" / path.name).read_bytes()
    again = _device_timer(tmp_path / "two", store, workers=2)
    again.prepare(units)  # everything is there: nothing exported, no worker started
    again(units[:1])
    assert again.log[0].reused

    swept = _device_timer(tmp_path / "two", store, passes=3)
    ms = swept(units[:2])
    assert [(u.key, u.repeat) for u in swept.log] == [(units[0].key, 0), (units[1].key, 0), (units[1].key, 1),
                                                     (units[0].key, 1), (units[0].key, 2), (units[1].key, 2)]
    stats = {r["id"]: r["stats"] for r in store.query(device="local")}
    for unit, figure in zip(units[:2], ms):  # the fastest of the unit's three runs' fastest runs, all stored
        fastest = [stats[u.stored_id]["min_ms"] for u in swept.log if u.key == unit.key]
        assert figure == min(fastest) == min(u.ms for u in swept.log if u.key == unit.key)
    assert swept.cost()["units"] == 2 and swept.cost()["passes"] == 3
    by_median = _device_timer(tmp_path / "two", store, passes=2, statistic="median")
    (figure,) = by_median(units[:1])
    stats = {r["id"]: r["stats"] for r in store.query(device="local")}
    assert figure == min(stats[u.stored_id]["median_ms"] for u in by_median.log)
    with pytest.raises(ValueError, match="statistic 'mean' is not one of"):
        _device_timer(tmp_path / "x", store, statistic="mean")
    with pytest.raises(ValueError, match="passes 0 must be an int >= 1"):
        _device_timer(tmp_path / "x", store, passes=0)
    with pytest.raises(ValueError, match="workers 0 must be an int >= 1"):
        _device_timer(tmp_path / "x", store, workers=0)


@pytest.mark.slow
def test_searched_spec_runs_on_the_luts_device_and_is_stored(device_build, tmp_path, home, capsys):
    """The loop closed on a device LUT: `nas search --measure` exports the spec as the LUT's units
    were (TFLite int8), runs it on the LUT's device, stores the result and adds it to the LUT."""
    import shutil
    from edgekit.cli import main
    lut_path = shutil.copy(device_build["out"], tmp_path / "lut.json")
    before = load_lut(lut_path)
    rc = main(["nas", "search", "--lut", str(lut_path), "--epochs", "1", "--limit", "320", "--batch-size", "32",
               "--out", str(tmp_path / "spec.json"), "--measure", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)["measured"]
    assert (m["device"], m["format"], m["precision"]) == ("local", "tflite", "int8") and m["measured_ms"] > 0
    after = load_lut(lut_path)
    assert len(after.networks) == len(before.networks) + 1 and after.entries == before.entries
    rows = ResultStore().query(device="local", format="tflite", precision="int8")
    # three passes (the default), all stored; the figure is the fastest run (the LUT's statistic)
    assert len(rows) == 3 and min(r["stats"]["min_ms"] for r in rows) == pytest.approx(m["measured_ms"])
    assert len({r["artifact_path"] for r in rows}) == 1
    assert open_model(rows[0]["artifact_path"]).manifest.arch["name"] == ArchSpec.from_json(
        (tmp_path / "spec.json").read_text()).name


def test_cli_lut_build_prints_progress_with_eta_and_resumes(tmp_path, capsys):
    from edgekit.cli import main
    args = ["lut", "build", "--resolution", "16", "--width", "0.25", "--in-chans", "1", "--num-classes", "10",
            "--head-channels", "64", "--format", "torch", "--precision", "fp32", "--runs", "3", "--warmup", "1",
            "--chunk", "40", "--out", str(tmp_path / "lut.json")]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    bars = [ln for ln in lines if "measured" in ln and "ETA" in ln and "chains" not in ln]
    assert len(bars) == 3 and "measured 104/104" in bars[-1] and "ETA 0:00" in bars[-1], lines
    assert bars[0].lstrip().startswith("[" + "#" * 9) and "measured 40/104" in bars[0]
    chains = [ln for ln in lines if "chains measured" in ln and "ETA" in ln]
    assert chains and "chains measured 38/38" in chains[-1], lines  # 32 of 4 units, 6 whole networks
    assert any(ln.startswith("junctions: 38 chains measured whole; per crossing") for ln in lines), lines
    assert main(args) == 0  # resumed: nothing left to measure
    assert not [ln for ln in capsys.readouterr().out.splitlines() if "ETA" in ln]
    assert len(load_lut(tmp_path / "lut.json").entries) == 104
    assert len(load_lut(tmp_path / "lut.json").junctions["chains"]) == 38
    assert load_lut(tmp_path / "lut.json").statistic == "median"
    assert main([*args, "--statistic", "min"]) == 2
    assert "--format torch times eager PyTorch by the median" in capsys.readouterr().err


def test_two_networks_under_one_name_are_two_units(tmp_path):
    """A second search writing the same --out must not be measured from the first one's file."""
    a = NetworkUnit(MICRO.spec(MICRO.sample(1), name="searched"), 1, 10)
    b = NetworkUnit(MICRO.spec(MICRO.sample(2), name="searched"), 1, 10)
    assert a.spec.to_json() != b.spec.to_json() and a.key != b.key and a.key.startswith("network:searched:")
    from edgekit.lut.device import UnitExporter
    ex = UnitExporter(MICRO, work_dir=tmp_path)
    assert ex.path(a) != ex.path(b)
    assert NetworkUnit(MICRO.spec(MICRO.sample(1), name="searched"), 1, 10).key == a.key
