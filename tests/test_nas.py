"""FBNet v1 DNAS: the supernet's differentiable latency, the search's response to its latency
pressure, the target handling, the CLI, and the searched spec going through export."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgekit.cli import main
from edgekit.lut import CANDIDATES, FBNetV1Space, Lut, TorchTimer, build_lut, get_space, local_fingerprint, predict, save_lut
from edgekit.models import ArchSpec
from edgekit.nas import DnasConfig, SuperNet, fastest_choices, most_likely_within, search, search_arrays
from edgekit.nas.dnas import LatencyTable, load_arrays

torch.set_num_threads(1)

TINY = FBNetV1Space(resolution=16, width=0.25, in_chans=1, num_classes=10, head_channels=256,
                    stages=((16, 1, 1), (24, 2, 2), (32, 1, 2)), groups=None)


@pytest.fixture(scope="module")
def tiny_lut() -> Lut:
    timer = TorchTimer(runs=5, warmup=1)
    return build_lut(TINY, timer, device=local_fingerprint(timer.runtime, 1), format="torch", precision="fp32",
                     threads=1)


@pytest.fixture(scope="module")
def tiny_data():
    return load_arrays(TINY, "fashion-mnist", 960)


def test_temperature_schedule_and_config_checks():
    cfg = DnasConfig()
    assert cfg.temperature(0) == 5.0
    assert cfg.temperature(10) == pytest.approx(5.0 * math.exp(-0.45))
    with pytest.raises(ValueError, match="warmup_epochs 3 must be in"):
        DnasConfig(epochs=3, warmup_epochs=3)
    with pytest.raises(ValueError, match="target_ms -1"):
        DnasConfig(target_ms=-1.0)
    with pytest.raises(ValueError, match="split 1.2"):
        DnasConfig(split=1.2)
    with pytest.raises(ValueError, match="derive 'best'"):
        DnasConfig(derive="best")
    with pytest.raises(ValueError, match="band 1.5"):
        DnasConfig(band=1.5)


@pytest.mark.parametrize("crossing_ms", [None, -0.03])
def test_most_likely_within_matches_brute_force(tiny_lut, crossing_ms):
    """The budget derivation is exact: over all 9^4 points of the tiny space, the most likely one
    whose plain sum lies in the window. The LUT's keys are the measured one's, its values seeded
    (measured values change from run to run, and some would leave a window with no point in it).
    With a junction model whose crossing saves more than many blocks' entries cost, layers have
    negative latencies, as a measured model at width 1.0 gives."""
    import dataclasses
    import itertools

    from edgekit.lut.junction import JunctionModel

    rng = np.random.default_rng(3)
    tiny_lut = dataclasses.replace(tiny_lut, entries={k: float(v) for k, v in zip(
        sorted(tiny_lut.entries), rng.uniform(0.01, 0.2, len(tiny_lut.entries)))})
    if crossing_ms is not None:
        tiny_lut = tiny_lut.replace(junctions={"chains": [], "model": JunctionModel((crossing_ms, 0.0), 4).to_dict()})
        assert LatencyTable.of(TINY, tiny_lut).per_layer.min() < 0
    points = list(itertools.product(CANDIDATES, repeat=len(TINY.layers)))
    ms = np.array([predict(TINY.spec(p), tiny_lut).plain_ms for p in points])
    idx = np.array([[CANDIDATES.index(c) for c in p] for p in points])
    _, fast_ms = fastest_choices(TINY, tiny_lut)
    slow_ms = ms.max()
    for trial in range(4):
        logp = np.log(rng.dirichlet(np.ones(len(CANDIDATES)) * 0.5, size=len(TINY.layers)))
        score = logp[np.arange(len(TINY.layers)), idx].sum(1)
        high = fast_ms + (slow_ms - fast_ms) * (0.2 + 0.2 * trial)
        low = high * 0.95
        got = most_likely_within(TINY, tiny_lut, logp, low, high)
        inside = (ms >= low) & (ms <= high)
        assert got is not None and inside.any()
        got_ms = predict(TINY.spec(got), tiny_lut).plain_ms
        assert low <= got_ms <= high
        got_score = logp[np.arange(len(TINY.layers)), [CANDIDATES.index(c) for c in got]].sum()
        assert got_score <= score[inside].max() + 1e-9
        # exact up to the grid (4000 steps of the budget): no point clear of the window's edges by a
        # few steps is more likely
        margin = 2e-3 * high
        clear = (ms >= low + margin) & (ms <= high - margin)
        assert got_score >= score[clear].max() - 1e-9, (got_score, score[clear].max())
    assert most_likely_within(TINY, tiny_lut, logp, 0.0, fast_ms * 0.5) is None
    with pytest.raises(ValueError, match="log_probs has shape"):
        most_likely_within(TINY, tiny_lut, logp[:2], 0.0, high)


def test_supernet_latency_is_the_lut_expectation_and_differentiable(tiny_lut):
    torch.manual_seed(0)
    net = SuperNet(TINY, tiny_lut)
    choices = TINY.sample(3)
    with torch.no_grad():  # theta peaked on one choice per layer: E[LAT] -> that point's LUT sum
        net.theta.zero_()
        for row, c in zip(net.theta, choices):
            row[CANDIDATES.index(c)] = 40.0
    assert net.expected_ms() == pytest.approx(predict(TINY.spec(choices), tiny_lut).plain_ms, rel=1e-5)
    assert net.choices() == choices
    logits, latency = net(torch.randn(4, 1, 16, 16), tau=5.0)
    assert logits.shape == (4, 10)
    latency.backward()
    grad = net.theta.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_fastest_point_is_the_per_layer_minimum(tiny_lut):
    choices, ms = fastest_choices(TINY, tiny_lut)
    assert ms == pytest.approx(predict(TINY.spec(choices), tiny_lut).plain_ms)
    for seed in range(20):
        assert predict(TINY.spec(TINY.sample(seed)), tiny_lut).plain_ms >= ms - 1e-12


def test_target_below_the_fastest_point_returns_it_and_says_so(tiny_lut, tiny_data):
    _, fast_ms = fastest_choices(TINY, tiny_lut)
    x, y = tiny_data
    result = search_arrays(TINY, tiny_lut, x, y, config=DnasConfig(target_ms=fast_ms / 2, limit=None))
    assert result.prediction.plain_ms == pytest.approx(fast_ms)
    assert result.history == ()  # nothing to train for
    assert "below the fastest point" in result.notes[0]


def test_search_refuses_a_lut_of_another_space(tiny_lut):
    other = get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match="the LUT was built for space"):
        search(other, tiny_lut, config=DnasConfig())


def _search(lut, data, **kw):
    x, y = data
    cfg = DnasConfig(epochs=4, warmup_epochs=1, batch_size=32, limit=None, theta_lr=0.05, seed=0, **kw)
    result = search_arrays(TINY, lut, x, y, config=cfg)
    assert len(result.history) == 4 and all(math.isfinite(h["w_loss"]) for h in result.history)
    return result


@pytest.mark.slow
def test_more_latency_pressure_gives_a_faster_architecture(tiny_lut, tiny_data):
    """Without a target a larger beta must give an architecture the LUT predicts faster (the argmax:
    the search's own response); a target must give one inside [0.95 T, T], for a low and a middle
    target. (alpha multiplies the whole product-form loss, so it is not the lever.)"""
    _, fast_ms = fastest_choices(TINY, tiny_lut)
    free = _search(tiny_lut, tiny_data).prediction.plain_ms
    pressed = _search(tiny_lut, tiny_data, beta=20.0).prediction.plain_ms
    assert pressed < free, (pressed, free)
    for target in (fast_ms * 1.05, (fast_ms + free) / 2):
        result = _search(tiny_lut, tiny_data, target_ms=target)
        # the tiny space (4 layers) may have no point within 5 % below a target; then the most likely below it
        reachable = most_likely_within(TINY, tiny_lut, np.zeros((len(TINY.layers), 9)), 0.95 * target, target)
        low = 0.95 * target if reachable else fast_ms
        assert low <= result.prediction.plain_ms <= target, (result.prediction.plain_ms, target, free)
        assert result.argmax and result.argmax_ms == pytest.approx(
            predict(TINY.spec(result.argmax), tiny_lut).plain_ms)
        again = result.rederive(target)  # what `nas search --measure` calls with a corrected budget
        assert again.choices == result.choices and again.prediction == result.prediction
        other = (fast_ms + free) / 2 if target < (fast_ms + free) / 2 else fast_ms * 1.05
        moved = result.rederive(other)
        assert moved.target_ms == other and moved.history == result.history and moved.argmax == result.argmax
        assert moved.prediction.plain_ms <= other and moved.spec == TINY.spec(moved.choices)
    argmax_only = _search(tiny_lut, tiny_data, target_ms=fast_ms * 1.05, derive="argmax")
    assert argmax_only.choices == argmax_only.argmax


@pytest.mark.slow
def test_nas_search_cli_writes_a_spec_that_exports_and_runs(tmp_path, tiny_lut):
    from edgekit.export import ExportSettings, export
    from edgekit.train import build_model

    lut_path = save_lut(tiny_lut, tmp_path / "lut.json")
    out = tmp_path / "spec.json"
    _, fast_ms = fastest_choices(TINY, tiny_lut)
    rc = main(["nas", "search", "--space", "fbnet-v1", "--lut", str(lut_path), "--data", "fashion-mnist",
               "--target-ms", f"{fast_ms * 1.3:.6f}", "--out", str(out), "--epochs", "2", "--limit", "640",
               "--batch-size", "32", "--format", "torch"])
    assert rc == 0
    spec = ArchSpec.from_json(out.read_text())
    choices = TINY.spec_to_choices(spec)
    assert len(choices) == len(TINY.layers)
    assert predict(spec, tiny_lut).plain_ms <= float(f"{fast_ms * 1.3:.6f}")

    model = build_model(arch=spec, num_classes=10, in_chans=1, resolution=TINY.resolution)
    files = export(model, name="searched", out=tmp_path,
                   settings=ExportSettings(formats=("onnx",), precisions=("fp32",), holdout=16))
    assert files[0].parity.sqnr_db > 60
    import onnxruntime as ort
    sess = ort.InferenceSession(str(files[0].artifact.path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 1, 16, 16), np.float32)})
    assert logits.shape == (1, 10)


def test_cli_refuses_a_target_mismatch(tmp_path, tiny_lut, capsys):
    lut_path = save_lut(tiny_lut, tmp_path / "lut.json")
    rc = main(["nas", "search", "--lut", str(lut_path), "--out", str(tmp_path / "s.json"), "--format", "tflite"])
    assert rc == 2
    assert "format is 'torch', expected 'tflite'" in capsys.readouterr().err


def test_cli_lut_plan_and_predict(tmp_path, tiny_lut, capsys):
    rc = main(["lut", "plan", "--resolution", "32", "--width", "0.25", "--in-chans", "1", "--num-classes", "10",
               "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"] == 104 and len(doc["missing"]) == 104
    lut_path = save_lut(tiny_lut, tmp_path / "lut.json")
    spec_path = tmp_path / "spec.json"
    choices = TINY.sample(2)
    spec_path.write_text(TINY.spec(choices).to_json())
    assert main(["lut", "predict", "--lut", str(lut_path), "--arch", str(spec_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plain_ms"] == pytest.approx(predict(TINY.spec(choices), tiny_lut).plain_ms)


def test_searched_spec_measured_and_fed_back_into_the_lut(tmp_path, tiny_lut, capsys):
    """--measure: the searched spec runs (here: the torch LUT's own timer on this host), the
    measurement joins the LUT's networks, and the overhead model is refitted once two of them have
    different plain sums."""
    from edgekit.lut import load_lut
    lut_path = save_lut(tiny_lut.replace(networks=(), overhead=None), tmp_path / "lut.json")
    _, fast_ms = fastest_choices(TINY, tiny_lut)
    base = ["nas", "search", "--lut", str(lut_path), "--epochs", "1", "--limit", "320", "--batch-size", "32",
            "--measure", "--json"]
    seen = []
    for i, extra in enumerate(([], ["--target-ms", f"{fast_ms / 2:.6f}"])):  # free search; the fastest point
        assert main([*base, *extra, "--out", str(tmp_path / f"s{i}.json")]) == 0
        seen.append(json.loads(capsys.readouterr().out))
        lut = load_lut(lut_path)
        assert len(lut.networks) == i + 1 and lut.networks[-1]["ms"] == seen[-1]["measured"]["measured_ms"] > 0
        assert lut.networks[-1]["choices"] == seen[-1]["choices"]
    m = seen[1]["measured"]
    assert m["plain_error_pct"] == pytest.approx(100 * (m["plain_ms"] - m["measured_ms"]) / m["measured_ms"])
    assert not seen[0]["measured"]["overhead_refitted"]
    assert m["overhead_refitted"] == (seen[0]["predicted"]["plain_ms"] != seen[1]["predicted"]["plain_ms"])
    assert (lut.overhead is not None) == m["overhead_refitted"] and (lut.overhead is None or lut.overhead["n"] == 2)


def test_a_target_maps_through_the_overhead_model(tmp_path, tiny_lut, capsys):
    from edgekit.lut.predict import plain_target
    lut = tiny_lut.replace(overhead={"model": "linear", "a_ms": 0.1, "b": 1.25, "n": 3, "mape_plain": 9.0,
                                     "mape_fitted": 2.0})
    plain, note = plain_target(lut, 0.6)
    assert plain == pytest.approx(0.4) and "0.6 ms on the device = 0.4 ms of LUT plain sum" in note
    assert plain_target(tiny_lut.replace(overhead=None), 0.6) == (0.6, None)
    with pytest.raises(ValueError, match="below the fixed overhead 0.1 ms"):
        plain_target(lut, 0.05)
    lut_path = save_lut(lut, tmp_path / "lut.json")
    assert main(["nas", "search", "--lut", str(lut_path), "--epochs", "1", "--limit", "320", "--batch-size", "32",
                 "--target-ms", "0.6", "--out", str(tmp_path / "t.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["target_note"] == note and doc["target_ms"] == pytest.approx(0.4)


def test_next_budget_interpolates_between_networks_measured_on_either_side_of_the_target():
    """The measured rounds' aim: one network, or all on one side, scale the target by the ratio of
    plain sum to measured of the one closest to it; networks on both sides interpolate the plain
    sum between the nearest below and above (a pair ordered unlike in plain sum and measured falls
    back to the ratio); always centred in the ``[B (1 - band), B]`` window."""
    from edgekit.nas.commands import next_budget

    c = 1 - 0.05 / 2
    assert next_budget([(0.4, 0.5)], 0.45, 0.05) == pytest.approx(0.45 * 0.4 / 0.5 / c)
    assert next_budget([(0.2, 0.3), (0.35, 0.40)], 0.45, 0.05) == pytest.approx(0.45 * 0.35 / 0.40 / c)
    both = [(0.2, 0.3), (0.36, 0.40), (0.44, 0.48), (0.6, 0.7)]
    assert next_budget(both, 0.45, 0.05) == pytest.approx((0.36 + 0.05 * 0.08 / 0.08) / c)
    assert next_budget(both, 0.45, 0.05) != pytest.approx(0.45 * 0.44 / 0.48 / c)  # not the last one's ratio
    unordered = [(0.40, 0.425), (0.38, 0.48)]
    assert next_budget(unordered, 0.45, 0.05) == pytest.approx(0.45 * 0.40 / 0.425 / c)
    with pytest.raises(ValueError, match="at least one measured network"):
        next_budget([], 0.45, 0.05)
