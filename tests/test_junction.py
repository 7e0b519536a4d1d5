"""The junction model: what a whole network pays between its blocks that separately measured blocks do
not (one call each, the crossing from block to block), measured on chains of consecutive units and
added to the LUT's plain sum."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.lut import FBNetV1Space, Lut, build_lut, load_lut, predict, save_lut
from edgekit.lut.build import NetworkUnit
from edgekit.lut.junction import (ChainUnit, JunctionModel, crossing_features, fit_junctions,
                                  junction_model, junction_plan, measure_junctions, weight_kib)
from edgekit.lut.lut import LutError
from edgekit.lut.space import network_signatures

SPACE = FBNetV1Space(resolution=16, width=0.25, in_chans=1, num_classes=10, head_channels=64)
LAW = (-0.004, 0.0005)  # ms per crossing, ms per KiB crossing (fp32)
COLD = 0.0002  # ms per KiB of weights read from below the cache
CACHE = 150  # KiB: every network of SPACE outgrows it (195-570 KiB of fp32 weights), about half the chains do


def _entry(sig) -> float:
    return 0.01 + 1e-6 * float(np.prod(sig.in_shape)) + (0.003 if sig.kind == "head" else 0.0)


def _crossing(sig) -> float:
    return float(np.dot(LAW, crossing_features(sig, "fp32")))


def _law(unit, cache=None, capacity=None) -> float:
    """A device whose units cost their entry each, every crossing inside them ``LAW``, and, once
    their weights together outgrow ``capacity`` (default ``cache``), ``COLD`` per KiB of those that
    fit in ``cache`` alone."""
    if isinstance(unit, NetworkUnit):
        parts = [s for s in network_signatures(unit.spec, in_chans=1, num_classes=10) if not s.is_identity]
    else:
        parts = list(getattr(unit, "parts", (unit,)))
    cold = 0.0
    if cache and len(parts) > 1:
        w = [weight_kib(s, "fp32") for s in parts]
        cold = COLD * sum(v for v in w if v <= cache) if sum(w) > (capacity or cache) else 0.0
    return sum(_entry(s) for s in parts) + sum(_crossing(s) for s in parts[1:]) + cold


class LawTimer:
    def __init__(self, fail_after: int | None = None, cache=None, capacity=None):
        self.calls, self.units, self.fail_after, self.cache, self.capacity = 0, [], fail_after, cache, capacity

    def __call__(self, units):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise ConnectionError("the device went away")
        self.calls += 1
        self.units += [u.key for u in units]
        return [_law(u, self.cache, self.capacity) for u in units]


def _lut(timer, cache=None) -> Lut:
    device = {"device": "law", **({"caches": {"L1d": 32, "L2": cache}} if cache else {})}
    return build_lut(SPACE, timer, device=device, format="onnx", precision="fp32", threads=1)


@pytest.mark.parametrize("cache", [None, CACHE])
def test_chains_recover_the_junction_law_and_the_plain_sum_becomes_the_network(tmp_path, cache):
    """Without a cache size in the device's fingerprint no weights are cold; with one, the chains
    that outgrow it give the cold cost, which every network of this space pays."""
    timer = LawTimer(cache=cache)
    lut = measure_junctions(_lut(timer, cache), SPACE, timer, count=12, out=tmp_path / "lut.json")
    model = junction_model(lut)
    assert model is not None and model.n == 12 + 2  # and two chains of whole networks
    assert np.allclose(model.coef, LAW, atol=1e-9)
    assert model.errors["held_out_mae_ms"] < 1e-9
    if cache:
        assert model.cold_on and model.cold_share == 1.0 and 2 <= model.errors["cold_chains"] < 14
        assert model.cold_ms_per_kib == pytest.approx(COLD, abs=1e-12)
    else:
        assert not model.cold_on and model.cold_ms_per_kib == 0 and model.errors["cold_chains"] == 0
    assert load_lut(tmp_path / "lut.json") == lut  # saved with its chains and model
    for seed in range(5):
        spec = SPACE.spec(SPACE.sample(seed))
        p = predict(spec, lut)
        measured = _law(NetworkUnit(spec, 1, 10), cache)
        assert p.plain_ms == pytest.approx(measured, abs=1e-12)
        sigs = network_signatures(spec, in_chans=1, num_classes=10)
        assert p.entries_ms == pytest.approx(sum(_entry(s) for s in sigs if not s.is_identity))
        kept = [s for s in sigs if not s.is_identity]  # identity skips add no node: their neighbours meet
        crossings = sum(_crossing(b) for b in kept[1:])
        assert p.plain_ms - p.entries_ms == pytest.approx(crossings + (measured - _law(NetworkUnit(spec, 1, 10))))
    without = lut.replace(junctions=None)
    assert predict(spec, without).plain_ms == predict(spec, without).entries_ms == p.entries_ms


def test_the_capacity_a_chain_keeps_warm_is_fitted_below_the_cache_size(tmp_path):
    """A device whose L2 keeps three quarters of its size of weights warm across units (int8 chains
    ending in a large head show less than half): the fit finds that capacity among the eighths of
    the L2 (a chain of 121 KiB of weights tells it from the L2's 150 KiB), and the plain sum of every
    network, all of which outgrow it, is the device's time."""
    capacity = CACHE * 3 / 4
    timer = LawTimer(cache=CACHE, capacity=capacity)
    lut = measure_junctions(_lut(timer, CACHE), SPACE, timer, count=12, out=tmp_path / "lut.json")
    model = junction_model(lut)
    assert model.capacity_kib == capacity and model.cache_kib == CACHE and model.cold_on
    assert np.allclose(model.coef, LAW, atol=1e-9) and model.cold_ms_per_kib == pytest.approx(COLD, abs=1e-12)
    assert model.errors["held_out_mae_ms"] < 1e-9
    for seed in range(5):
        spec = SPACE.spec(SPACE.sample(seed))
        assert predict(spec, lut).plain_ms == pytest.approx(_law(NetworkUnit(spec, 1, 10), CACHE, capacity), abs=1e-12)
    at_size = fit_junctions([(u, 0.0) for u in junction_plan(SPACE, 12)], "fp32", cache_kib=CACHE)
    assert at_size.capacity_kib == CACHE and at_size.cold_ms_per_kib == 0  # nothing to fit: the L2's size
    assert JunctionModel.from_dict(model.to_dict()) == model
    old = {k: v for k, v in model.to_dict().items() if k != "capacity_kib"}  # a LUT written before the fit
    assert JunctionModel.from_dict(old).capacity_kib is None


def test_a_killed_chain_measurement_resumes_without_measuring_a_chain_twice(tmp_path):
    out = tmp_path / "lut.json"
    lut = _lut(LawTimer())
    save_lut(lut, out)
    dying = LawTimer(fail_after=1)
    with pytest.raises(ConnectionError):
        measure_junctions(lut, SPACE, dying, count=12, out=out, chunk=5)
    partial = load_lut(out)
    assert len(partial.junctions["chains"]) == 5 and partial.junctions["model"] is None
    assert junction_model(partial) is None  # a third of the chains fits nothing: the plain sum stays the entries'
    again = LawTimer()
    done = measure_junctions(partial, SPACE, again, count=12, out=out, chunk=5)
    assert len(again.units) == 9 and not set(again.units) & set(dying.units)
    assert len(done.junctions["chains"]) == 14 and np.allclose(junction_model(done).coef, LAW, atol=1e-9)


def test_chains_are_consecutive_units_spread_from_stem_to_head():
    chains = junction_plan(SPACE, 16, length=4, seed=0)
    assert len(chains) == 16 + 3 == len({c.key for c in chains})
    short, whole = chains[:16], chains[16:]
    assert sum(c.parts[0].kind == "stem" for c in short) >= 3 and sum(c.parts[-1].kind == "head" for c in short) >= 3
    assert all(len(c.parts) == 4 and not any(p.is_identity for p in c.parts) for c in short)
    assert all(c.parts[0].kind == "stem" and c.parts[-1].kind == "head" and len(c.parts) > 10 for c in whole)
    assert len(junction_plan(SPACE, 16, whole=0)) == 16
    assert junction_plan(SPACE, 16, length=4, seed=0) == chains and junction_plan(SPACE, 16, seed=1) != chains
    stem, head = SPACE.stem_signature(), SPACE.head_signature()
    with pytest.raises(ValueError, match="output .* is not the second's input"):
        ChainUnit((stem, head))
    with pytest.raises(ValueError, match="at least 2 units"):
        junction_plan(SPACE, 4, length=1)
    model = JunctionModel(LAW, 3)
    assert model.extra(stem) == 0.0 and model.extra(head) == pytest.approx(_crossing(head))


def test_the_fit_needs_chains_and_the_lut_needs_their_units(tmp_path, edgekit_cli):
    res = edgekit_cli("lut", "build", "--resolution", "16", "--width", "0.25", "--in-chans", "1", "--num-classes",
                      "10", "--chains", "-1", "--out", tmp_path / "lut.json")
    assert res.returncode == 2 and "--chains -1 must be an int >= 0" in res.stderr
    assert not (tmp_path / "lut.json").exists()
    with pytest.raises(ValueError, match="at least 4 measured chains"):
        fit_junctions([(c, 0.0) for c in junction_plan(SPACE, 3, whole=0)], "fp32")
    lut = _lut(LawTimer())
    gone = next(iter(lut.entries))
    with pytest.raises(LutError, match="lacks .* entries of the chains"):
        measure_junctions(lut.replace(entries={k: v for k, v in lut.entries.items() if k != gone}), SPACE,
                          LawTimer(), count=40)


@pytest.mark.parametrize("junctions, message", [
    ({"chains": "x"}, "LUT junctions must be"),
    ({"chains": [{"units": ["a"], "ms": 1.0}]}, r"junctions.chains\[0\] must be"),
    ({"chains": [{"units": ["a", "b"], "ms": -1.0}]}, r"junctions.chains\[0\] must be"),
    ({"chains": [], "model": {"a_ms": "nan"}}, "junctions.model .* must hold finite"),
])
def test_a_corrupt_junction_record_is_refused(tmp_path, junctions, message):
    doc = json.loads(_lut(LawTimer()).to_json())
    doc["junctions"] = junctions
    (tmp_path / "lut.json").write_text(json.dumps(doc))
    with pytest.raises(LutError, match=message):
        load_lut(tmp_path / "lut.json")


@pytest.mark.slow
@pytest.mark.parametrize("fmt, precision", [("onnx", "fp32"), ("tflite", "int8")])
def test_a_chain_exports_and_runs_on_the_device_like_any_unit(tmp_path, fmt, precision):
    """The stem and the first blocks as one file, int8 calibrated on the images the stem takes,
    run by the local device's runner."""
    from edgekit.lut.device import DeviceTimer
    from edgekit.devices.base import open_model

    chain = junction_plan(SPACE, 1, length=3, seed=0, whole=0)[0]
    assert chain.parts[0].kind == "stem"
    timer = DeviceTimer(SPACE, work_dir=tmp_path, format=fmt, precision=precision, store=False, calib_samples=8,
                        passes=1)
    (ms,) = timer([chain])
    assert ms > 0 and timer.log[0].key == chain.key
    model = open_model(timer.log[0].artifact)
    assert model.manifest.inputs[0].shape[-1] in (16, 1)
    assert "LUT unit chain:stem" in " ".join(model.manifest.notes)


def test_the_agent_reads_the_cores_caches_from_sysfs(tmp_path):
    from edgekit.devices.agent import cpu_caches

    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "48K"), (2, "Unified", "512K"),
                                             (3, "Unified", "2M")]):
        d = tmp_path / "cpu2" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(f"{value}\n")
    assert cpu_caches(2, root=str(tmp_path)) == {"L1d": 32, "L2": 512, "L3": 2048}
    assert cpu_caches(3, root=str(tmp_path)) is None  # no such core: no cache sizes, no cold term
