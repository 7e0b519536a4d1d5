"""FBNetV2's DMaskingNAS on measured latency (``fbnet-v2``, Fashion-MNIST scale: 1 channel, 10
classes, width 0.5), on the local device. Steps:

- ``size``: how many entries a channel-aware table has (layer-wise, the expectation's terms; and
  distinct, what a full build would measure) at 32 and 64 px.
- ``lut``: ``edgekit lut build --space fbnet-v2`` with ``--sample`` measured blocks (every stem and
  head; ``--space fbnet-v1``: every block), its block model's error on held-out measured entries,
  ``--chains`` chains measured whole for the junction model, ``--networks`` whole networks for the
  overhead fit; then ``edgekit lut check --samples``: the entries alone, the plain sum (entries and
  junctions) and the fitted figure against networks measured whole. Wall time and cost per entry.
- ``search``: ``edgekit nas search --space fbnet-v2 --measure --rounds`` on the ``lut`` step's table
  at three targets (a quarter, half and three quarters of the way from the fastest to the slowest
  point, in device milliseconds through the LUT's overhead model) and ``--seeds``: the measured
  latency of the first derived network and of the kept one against the target, the networks
  measured, the training's seconds and the whole command's.
- ``compare``: at the ``search`` step's targets (same ``--limit`` / ``--epochs``), against the
  ``fbnet-v2`` searched networks: ``fbnet-v1``'s DNAS on a ``fbnet-v1`` LUT of the same device,
  format, precision and resolution (``--steps lut --space fbnet-v1 --v1-width W``, W such that its
  range covers the targets: 1.0 at 32 px in ONNX fp32 here), at the same budget and seeds,
  and the zoo's FBNetV2 F1 and F4 narrowed to each target (their width multiplier bisected on the
  device's measurements). Every network is then trained with ``edgekit train NAME --arch`` on
  ``--train-limit`` images for ``--train-epochs`` and scored on the 10,000 test images.
- ``memory``: peak resident memory (each in a fresh process) of the search (supernet + architecture
  steps) against training the space's widest network alone on the same images and batches, and the
  seconds per epoch of each.

    .venv/bin/python bench/dmasking.py --steps size
    .venv/bin/python bench/dmasking.py --steps lut --resolution 32 --sample 400 --networks 10 --check 20
    .venv/bin/python bench/dmasking.py --steps lut --space fbnet-v1 --format tflite --precision int8 --check 20
    .venv/bin/python bench/dmasking.py --steps lut --format tflite --precision int8 --sample 300 --networks 8 --check 20 --check-passes 6
    .venv/bin/python bench/dmasking.py --steps memory --limit 2000
    .venv/bin/python bench/dmasking.py --steps search --resolution 32 --sample 400 --seeds 0,1 --limit 12000 --epochs 8
    .venv/bin/python bench/dmasking.py --steps lut --space fbnet-v1 --v1-width 1.0 --format onnx --precision fp32 --check 20
    .venv/bin/python bench/dmasking.py --steps compare --v1-width 1.0 --sample 400 --seeds 0,1 --limit 12000 --epochs 8

Writes bench/results/dmasking.json (steps run on separate occasions accumulate, each with its command
and date) and dmasking.md; exported files go to bench/out/dmasking/ (gitignored).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import OUT, RESULTS, cpu_model, fingerprint, write_json  # noqa: E402

STEPS = ("size", "lut", "memory", "search", "compare")
ZOO = ("fbnetv2_f1", "fbnetv2_f4")  # F1-F3 are one network at three resolutions; F4 has its own blocks
EDGEKIT = str(ROOT / ".venv" / "bin" / "edgekit")
SCALE = ["--width", "0.5", "--in-chans", "1", "--num-classes", "10"]


def _space(resolution: int):
    from edgekit.lut.space import get_space
    return get_space("fbnet-v2", resolution=resolution, width=0.5, in_chans=1, num_classes=10)


def step_size() -> dict[str, Any]:
    out = {}
    for side in (32, 64):
        space = _space(side)
        sigs = space.distinct_signatures()
        out[str(side)] = {"resolutions": list(space.resolutions), "layer_wise": space.lut_entries(),
                          "distinct": len(sigs), "distinct_blocks": sum(s.kind == "block" for s in sigs)}
    return out


def _run(cmd: list[str]) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout), seconds


def _kept(record: Path, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()`` (JSON), kept in ``record`` with ``key``: a step interrupted after hours of
    searches and training resumes from what is done, for the same key only (written atomically)."""
    key = json.loads(json.dumps(key))  # compared as read back
    if record.exists():
        kept = json.loads(record.read_text())
        if kept.get("key") == key:
            return kept["value"]
    value = compute()
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "value": value}))
    tmp.replace(record)
    return value


def _kept_run(cmd: list[str], record: Path) -> tuple[dict[str, Any], float]:
    """:func:`_run` kept in ``record`` beside what the command wrote (the same command only)."""
    out, seconds = _kept(record, cmd, lambda: _run(cmd))
    return out, seconds


def step_lut(args: argparse.Namespace) -> dict[str, Any]:
    lut = _lut_path(args)
    lut.parent.mkdir(parents=True, exist_ok=True)
    sample = ["--sample", str(args.sample)] if args.space == "fbnet-v2" else []
    build = [EDGEKIT, "lut", "build", "--space", args.space, "--resolution", str(args.resolution), *_scale(args),
             "--format", args.format, "--precision", args.precision, *sample, "--chains", str(args.chains),
             "--networks", str(args.networks), "--out", str(lut), "--json"]
    built, build_s = _run(build)
    check = [EDGEKIT, "lut", "check", "--lut", str(lut), "--samples", str(args.check), "--passes",
             str(args.check_passes), "--json"]
    checked, check_s = _run(check)
    model = built.get("block_model")
    return {"build_command": " ".join(build[1:]), "check_command": " ".join(check[1:]),
            "build_seconds": round(build_s, 1), "entries": built["entries"], "cost": built["cost"],
            "block_model": None if model is None else {k: model[k] for k in ("measured", "held_out", "fit",
                                                                              "all_after_refit")},
            "junctions": built.get("junctions"), "overhead": built["overhead"], "check_seconds": round(check_s, 1),
            "check": {k: checked[k] for k in ("plain", "entries", "lut_overhead", "held_out") if k in checked}}


def _scale(args: argparse.Namespace) -> list[str]:
    """Fashion-MNIST scale (1 channel, 10 classes; fbnet-v2 at width 0.5, fbnet-v1 at ``--v1-width``,
    0.25 as ``make demo`` by default), or ``--imagenet-head``: 3 channels, 1,000 classes, width 1.0."""
    if args.imagenet_head:
        return ["--width", "1.0", "--in-chans", "3", "--num-classes", "1000"]
    return ["--width", "0.5" if args.space == "fbnet-v2" else f"{args.v1_width:g}", "--in-chans", "1",
            "--num-classes", "10"]


def _lut_key(args: argparse.Namespace) -> str:
    space = "" if args.space == "fbnet-v2" else f"{args.space}-"
    sample = f"-sample{args.sample}" if args.space == "fbnet-v2" else ""
    head = "-imagenet-head" if args.imagenet_head else ""
    if args.space == "fbnet-v1" and not args.imagenet_head and args.v1_width != 0.25:
        head = f"-width{args.v1_width:g}"
    chains = f"-chains{args.chains}" if args.chains else ""
    return f"{space}{args.resolution}px-{args.format}-{args.precision}{sample}{head}{chains}"


def _search_key(args: argparse.Namespace) -> str:
    return f"{_lut_key(args)}, {args.limit} images x {args.epochs} epochs"


def _lut_path(args: argparse.Namespace) -> Path:
    if args.space == "fbnet-v2" and not args.imagenet_head and not args.chains:  # the first builds' folders
        return OUT / "dmasking" / f"lut-{args.resolution}-{args.format}-{args.precision}-s{args.sample}" / "lut.json"
    return OUT / "dmasking" / f"lut-{_lut_key(args)}" / "lut.json"


def step_search(args: argparse.Namespace) -> dict[str, Any]:
    from edgekit.lut.lut import load_lut
    from edgekit.nas.channel_lut import ChannelLatency

    lut_path = _lut_path(args)
    if not lut_path.exists():
        raise SystemExit(f"{lut_path} does not exist: run the lut step first with the same --resolution, --format, "
                         f"--precision and --sample")
    lut = load_lut(lut_path)
    from edgekit.lut.space import SPACES
    table = ChannelLatency(SPACES["fbnet-v2"].from_dict(lut.space), lut)
    fast, slow = table.fastest()[1], table.slowest()[1]
    o = lut.overhead or {"a_ms": 0.0, "b": 1.0}
    runs = []
    for share in (0.25, 0.5, 0.75):
        target = o["a_ms"] + o["b"] * (fast + share * (slow - fast))  # device ms
        for seed in (int(s) for s in args.seeds.split(",")):
            out = lut_path.parent / f"search-{share}-{seed}-{args.limit}x{args.epochs}.json"
            cmd = [EDGEKIT, "nas", "search", "--space", "fbnet-v2", "--lut", str(lut_path), "--target-ms",
                   f"{target:.5f}", "--seed", str(seed), "--epochs", str(args.epochs), "--limit", str(args.limit),
                   "--measure", "--rounds", str(args.rounds), "--out", str(out), "--json",
                   *(["--train-threads", str(args.train_threads)] if args.train_threads else [])]
            doc, seconds = _run(cmd)
            m = doc["measured"]
            runs.append({"share": share, "seed": seed, "target_ms": round(target, 5), "seconds": round(seconds, 1),
                         "measured_ms": m["measured_ms"], "error_pct": 100 * (m["measured_ms"] - target) / target,
                         "plain_ms": m["plain_ms"], "fitted_ms": m["fitted_ms"], "point": doc["point"],
                         "rounds": m["rounds"], "kept_round": m["round"], "search_seconds": round(doc["seconds"], 1),
                         "out": str(out.relative_to(ROOT)),
                         "peak_rss_mb": doc["peak_rss_mb"], "command": " ".join(cmd[1:])})
            lut = load_lut(lut_path)  # --measure refitted its overhead model
    within = sum(abs(r["error_pct"]) <= 5 for r in runs)
    return {"runs": runs, "within_5pct": within, "n": len(runs), "limit": args.limit, "epochs": args.epochs,
            "rounds": args.rounds}


def step_compare(args: argparse.Namespace, doc: dict[str, Any]) -> dict[str, Any]:
    from edgekit.lut.lut import load_lut

    key = _search_key(args)
    if key not in doc.get("search", {}):
        raise SystemExit(f"no search run {key!r} in bench/results/dmasking.json: run --steps search with the same "
                         f"--resolution, --format, --precision, --sample, --limit and --epochs first")
    seeds = {int(x) for x in args.seeds.split(",")}
    searched = [r for r in doc["search"][key]["result"]["runs"] if r["seed"] in seeds]
    v1_path = _lut_path(argparse.Namespace(**{**vars(args), "space": "fbnet-v1", "imagenet_head": False}))
    if not v1_path.exists():
        raise SystemExit(f"{v1_path} does not exist: run --steps lut --space fbnet-v1 --format {args.format} "
                         f"--precision {args.precision} --resolution {args.resolution} first")
    missing = [r for r in searched if "out" not in r or not (ROOT / r["out"]).exists()]
    if missing:
        raise SystemExit(f"the searched spec of {len(missing)} run(s) of {key!r} is not on disk (e.g. share "
                         f"{missing[0]['share']}, seed {missing[0]['seed']}): run --steps search again")
    v2_lut = load_lut(_lut_path(args))
    work = _lut_path(args).parent / f"compare-{args.limit}x{args.epochs}"
    work.mkdir(exist_ok=True)
    rows = []
    for share in sorted({r["share"] for r in searched}):
        runs = [r for r in searched if r["share"] == share]
        target = runs[0]["target_ms"]
        for r in runs:
            rows.append({"share": share, "target_ms": target, "method": "fbnet-v2 DMaskingNAS", "seed": r["seed"],
                         "spec": str(ROOT / r["out"]), "measured_ms": r["measured_ms"]})
        for seed in sorted({r["seed"] for r in runs}):
            out = work / f"v1-{share}-{seed}.json"
            cmd = [EDGEKIT, "nas", "search", "--space", "fbnet-v1", "--lut", str(v1_path), "--target-ms",
                   f"{target:.5f}", "--seed", str(seed), "--epochs", str(args.epochs), "--limit", str(args.limit),
                   "--measure", "--rounds", str(args.rounds), "--out", str(out), "--json",
                   *(["--train-threads", str(args.train_threads)] if args.train_threads else [])]
            got, seconds = _kept_run(cmd, out.with_suffix(".run.json"))
            rows.append({"share": share, "target_ms": target, "method": "fbnet-v1 DNAS", "seed": seed,
                         "spec": str(out), "measured_ms": got["measured"]["measured_ms"],
                         "search_seconds": round(seconds, 1), "command": " ".join(cmd[1:])})
        for name in ZOO:
            spec, ms, width = _narrowed(name, target, v2_lut, work)
            rows.append({"share": share, "target_ms": target, "method": f"zoo {name} narrowed", "seed": None,
                         "spec": str(spec), "measured_ms": ms, "width": width})
    for row in rows:  # every network trained alike, after all measurements
        spec = json.loads(Path(row["spec"]).read_text())
        weights = work / (Path(row["spec"]).stem + ".pt")
        cmd = [EDGEKIT, "train", spec["name"], "--arch", row["spec"], "--epochs", str(args.train_epochs),
               "--limit", str(args.train_limit), "--out", str(weights), "--json"]
        # not .run.json: the v1 searches' and the zoo narrowings' records sit there, under the spec's stem
        got, seconds = _kept_run(cmd, weights.with_suffix(".train.json"))
        row.update(top1=got["top1"], train_seconds=round(seconds, 1), **_size(spec),
                   error_pct=100 * (row["measured_ms"] - row["target_ms"]) / row["target_ms"])
    return {"rows": rows, "limit": args.limit, "epochs": args.epochs, "train_limit": args.train_limit,
            "train_epochs": args.train_epochs, "v1_lut": str(v1_path.relative_to(ROOT)),
            "v2_lut": str(_lut_path(args).relative_to(ROOT))}


def _size(spec: dict[str, Any]) -> dict[str, int]:
    """Parameters, MACs at the spec's own input side, that side, and the number of blocks that are
    not skips: what the compare table shows of each network beside its latency and accuracy."""
    from edgekit.models import ArchSpec, from_arch
    from edgekit.models.profile import profile_model
    arch = ArchSpec.from_dict(spec)
    net = from_arch(arch, num_classes=10, in_chans=1)
    prof = profile_model(net, (1, 1, arch.resolution, arch.resolution), device="cpu")
    return {"params": prof.params, "macs": prof.macs, "resolution": arch.resolution,
            "blocks": sum(b.type != "skip" for stage in arch.stages for b in stage)}


def _narrowed(name: str, target_ms: float, lut, work: Path, *, steps: int = 7) -> tuple[Path, float, float]:
    """The zoo network ``name`` at the LUT's resolution and Fashion-MNIST scale, its width multiplier
    bisected (geometrically, in [0.1, 1.5]) on latencies measured on the LUT's device the way the
    LUT measures networks; the measured width closest to the target. Widths round to 8 channels, so
    neighbouring multipliers often build one network: each is measured once."""
    from edgekit.lut.build import NetworkUnit
    from edgekit.lut.device import DeviceTimer
    from edgekit.lut.space import SPACES
    from edgekit.models.fbnet import fbnet_arch, scale_width

    space = SPACES[lut.space["name"]].from_dict(lut.space)

    def bisect() -> dict[str, Any]:
        timer = DeviceTimer.for_lut(lut, space, work_dir=work / "zoo", passes=3)
        seen: dict[str, tuple[float, float]] = {}

        def measure(width: float) -> float:
            spec = scale_width(fbnet_arch(name), width).replace(resolution=space.resolution, name=f"{name}_narrowed")
            text = spec.to_json()
            if text not in seen:
                (ms,) = timer([NetworkUnit(spec, space.in_chans, space.num_classes)])
                seen[text] = (ms, width)
            return seen[text][0]

        lo, hi = 0.1, 1.5
        for _ in range(steps):
            mid = (lo * hi) ** 0.5
            if measure(mid) > target_ms:
                hi = mid
            else:
                lo = mid
        text, (ms, width) = min(seen.items(), key=lambda kv: abs(kv[1][0] - target_ms))
        return {"spec": text, "measured_ms": ms, "width": width}

    path = work / f"zoo-{name}-{target_ms:.4f}.json"
    key = [name, target_ms, steps, dict(lut.device), lut.format, lut.precision, lut.threads, lut.space]
    got = _kept(path.with_suffix(".run.json"), key, bisect)  # an interrupted compare step resumes
    path.write_text(got["spec"])
    return path, got["measured_ms"], got["width"]


_MEMORY_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from edgekit.lut.space import get_space
from edgekit.nas.dnas import DnasConfig, load_arrays, _batches, _split
import numpy as np
kind, side, limit, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
space = get_space("fbnet-v2", resolution=side, width=0.5, in_chans=1, num_classes=10)
x, y = load_arrays(space, "fashion-mnist", limit)
config = DnasConfig(epochs=epochs + 1, warmup_epochs=0, limit=limit)
t0 = time.perf_counter()
if kind == "search":
    import torch.nn.functional as F
    from edgekit.nas.channel_search import ArchParams, _Latency
    from edgekit.nas.dmasking import SuperNetV2
    net, arch = SuperNetV2(space).train(), ArchParams(space)
    w_idx, t_idx = _split(len(x), config)
    w_opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    t_opt = torch.optim.Adam(arch.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        for idx in _batches(w_idx, 64, rng):
            with torch.no_grad():
                s = arch.sample(5.0)
            loss = F.cross_entropy(net(xt[idx], s), yt[idx]); w_opt.zero_grad(); loss.backward(); w_opt.step()
        for p in net.parameters():
            p.requires_grad_(False)
        for idx in _batches(t_idx, 64, rng):
            s = arch.sample(5.0)
            loss = F.cross_entropy(net(xt[idx], s), yt[idx]); t_opt.zero_grad(); loss.backward(); t_opt.step()
        for p in net.parameters():
            p.requires_grad_(True)
else:
    import torch.nn.functional as F
    from edgekit.models import from_arch
    net = from_arch(space.spec(space.widest()), num_classes=10, in_chans=1).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        for idx in _batches(np.arange(len(x)), 64, rng):
            loss = F.cross_entropy(net(xt[idx]), yt[idx]); opt.zero_grad(); loss.backward(); opt.step()
seconds = time.perf_counter() - t0
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds_per_epoch": seconds / epochs}))
"""


def step_memory(args: argparse.Namespace) -> dict[str, Any]:
    out = {"limit": args.limit, "epochs": args.epochs, "resolution": args.resolution,
           "note": "the search: weights on 80 % and architecture on 20 % of the images per epoch (every image "
                   "once); the widest network: all images per epoch; batch 64, 1 thread, each a fresh process"}
    for kind in ("widest", "search"):
        cmd = [sys.executable, "-c", _MEMORY_CHILD, kind, str(args.resolution), str(args.limit), str(args.epochs)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"memory {kind} failed: {done.stderr.strip()[-2000:]}")
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    out["peak_ratio"] = out["search"]["peak_rss_mb"] / out["widest"]["peak_rss_mb"]
    out["epoch_ratio"] = out["search"]["seconds_per_epoch"] / out["widest"]["seconds_per_epoch"]
    return out


def table(doc: dict[str, Any]) -> str:
    lines = ["# fbnet-v2 (DMaskingNAS) on measured latency", "",
             f"Last run on: {doc.get('machine', {}).get('cpu', '?')}. Each section names its date and, when it was "
             f"recorded, its CPU; reproduce it with its command.", ""]
    if "size" in doc:
        lines += ["## Table size", "", "| input | resolutions | layer-wise entries | distinct entries |",
                  "|---:|---|---:|---:|"]
        for side, s in doc["size"]["result"].items():
            lines.append(f"| {side} px | {', '.join(map(str, s['resolutions']))} | {s['layer_wise']:,} | "
                         f"{s['distinct']:,} |")
        lines.append("")
    if doc.get("lut"):
        lines += _summary(doc["lut"])
    for key, run in sorted(doc.get("lut", {}).items()):
        r = run["result"]
        lines += [f"## LUT {key}", "", f"`edgekit {r['build_command']}` ({r['build_seconds']:.0f} s, "
                  f"{r['entries']} entries), then `edgekit {r['check_command']}` ({r['check_seconds']:.0f} s); "
                  f"{_when(run)}, load average {run.get('loadavg_start', ['?'])[0]} at the start.", ""]
        if r.get("block_model"):
            h = r["block_model"]["held_out"]
            lines += [f"Block model on {h['n']} held-out measured blocks: MAPE {h['mape']:.1f} %, "
                      f"{100 * h['within_10pct']:.0f} % within +-10 % (max {h['max_abs_pct']:.0f} %).", ""]
        j = r.get("junctions")
        if j:
            cold = ""
            if j.get("cache_kib"):
                cap = j.get("capacity_kib") or j["cache_kib"]
                cold = (f", cold weights {1000 * j['d_cold_ms_per_kib']:.4f} us/KiB beyond {cap:.0f} KiB of the "
                        f"{j['cache_kib']:.0f} KiB L2 ({j['errors']['cold_chains']} chains outgrow it; "
                        f"{100 * (j['cold_share'] or 0):.0f} % of "
                        f"networks, {'applied' if j['cold_on'] else 'not applied'})")
            lines += [f"Junction model on {j['n']} chains measured whole: per crossing {1000 * j['a_ms']:+.2f} us "
                      f"{1000 * j['b_ms_per_kib']:+.3f} us/KiB{cold}; held-out chains off by "
                      f"{1000 * j['errors']['held_out_mae_ms']:.2f} us on average.", ""]
        lines += ["| networks | n | within 10 % | MAPE % | Spearman |", "|---|---:|---:|---:|---:|"]
        c = r["check"]
        rows = [("entries alone", c["entries"])] if c.get("entries") else []
        rows.append(("plain sum" + (" (entries + junctions)" if c.get("entries") else ""), c["plain"]))
        if c.get("lut_overhead"):
            rows.append(("LUT overhead model", c["lut_overhead"]["all"]))
        if "fitted" in c.get("held_out", {}):
            rows.append(("fit on part, held-out", c["held_out"]["fitted"]))
        for label, m in rows:
            sp = "-" if m["spearman"] is None else f"{m['spearman']:.2f}"
            lines.append(f"| {label} | {m['n']} | {100 * m['within_10pct']:.0f} % | {m['mape']:.1f} | {sp} |")
        lines.append("")
    if "memory" in doc:
        m = doc["memory"]["result"]
        lines += ["## Search memory and time", "", f"`{doc['memory']['command']}` ({_when(doc['memory'])}, load "
                  f"average {doc['memory'].get('loadavg_start', ['?'])[0]} at the start): "
                  f"{m['limit']} images, {m['epochs']} epoch(s) at {m['resolution']} px. {m['note']}.", "",
                  "| | peak RSS MB | s per epoch |", "|---|---:|---:|",
                  f"| widest network alone | {m['widest']['peak_rss_mb']:.0f} | {m['widest']['seconds_per_epoch']:.1f} |",
                  f"| search | {m['search']['peak_rss_mb']:.0f} | {m['search']['seconds_per_epoch']:.1f} |",
                  f"| ratio | {m['peak_ratio']:.2f} | {m['epoch_ratio']:.2f} |", ""]
    for key, run in sorted(doc.get("compare", {}).items()):
        r = run["result"]
        lines += [f"## Compared at the same targets: {key}", "",
                  f"`{run['command']}` ({_when(run)}). Searches on {r['limit']} images for {r['epochs']} epochs "
                  f"(`{r['v2_lut']}`, `{r['v1_lut']}`); every network then trained with `edgekit train NAME "
                  f"--arch` on {r['train_limit']} images for {r['train_epochs']} epochs; top-1 on the 10,000 test "
                  f"images; latency measured on the LUTs' device.", "",
                  "| target ms | network | seed | measured ms | off target | input px | blocks (not skips) | params "
                  "| MACs | top-1 % |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["rows"]:
            name = x["method"] + (f" (width {x['width']:.3f})" if x.get("width") else "")
            lines.append(f"| {x['target_ms']:.4f} | {name} | {'-' if x['seed'] is None else x['seed']} | "
                         f"{x['measured_ms']:.4f} | {x['error_pct']:+.1f} % | {x.get('resolution', '-')} | "
                         f"{x.get('blocks', '-')} | {x['params']:,} | "
                         + (f"{x['macs'] / 1e6:.1f} M" if "macs" in x else "-") + f" | {100 * x['top1']:.2f} |")
        lines.append("")
    for key, run in sorted(doc.get("search", {}).items()):
        r = run["result"]
        lines += [f"## Searches on the LUT {key}", "", f"`{run['command']}` ({_when(run)}): {r['limit']} images, "
                  f"{r['epochs']} epoch(s), up to {r.get('rounds', 1)} network(s) measured per search; "
                  f"{r['within_5pct']} of {r['n']} measured within +-5 % of the target.", "",
                  "| target share | seed | target ms | first network ms (error) | kept ms | error | networks measured | "
                  "training s | command s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["runs"]:
            first = x.get("rounds", [{"measured_ms": x["measured_ms"]}])[0]["measured_ms"]
            lines.append(f"| {x['share']:g} | {x['seed']} | {x['target_ms']:.4f} | {first:.4f} "
                         f"({100 * (first - x['target_ms']) / x['target_ms']:+.1f} %) | {x['measured_ms']:.4f} | "
                         f"{x['error_pct']:+.1f} % | {len(x.get('rounds', [1]))} | {x.get('search_seconds', '-')} | "
                         f"{x['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _when(entry: dict[str, Any]) -> str:
    return entry["date"] + (f", {entry['cpu']}" if entry.get("cpu") else "")


def _summary(luts: dict[str, Any]) -> list[str]:
    """One line per LUT with junctions: the plain sum without and with them, and after the fit."""
    rows = [(k, r) for k, r in sorted(luts.items()) if r["result"]["check"].get("entries")]
    if not rows:
        return []
    lines = ["## Plain sum against networks measured whole", "",
             "Within +-10 % of the measured latency: the entries alone (FBNet's sum), the plain sum with the "
             "junctions measured on chains (no whole network fitted), and the overhead model fitted on part of the "
             "checked networks, on the rest.", "",
             "| LUT | built | networks | entries alone | plain sum | MAPE plain % | fitted, held-out |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, run in rows:
        c = run["result"]["check"]
        held = c.get("held_out", {}).get("fitted")
        lines.append(f"| {key} | {_when(run)} | {c['plain']['n']} | {100 * c['entries']['within_10pct']:.0f} % | "
                     f"{100 * c['plain']['within_10pct']:.0f} % | {c['plain']['mape']:.1f} | "
                     + ("-" if held is None else f"{100 * held['within_10pct']:.0f} % of {held['n']}") + " |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="size", help=f"comma-separated: {', '.join(STEPS)}")
    ap.add_argument("--space", default="fbnet-v2", choices=("fbnet-v1", "fbnet-v2"), help="the lut step's space")
    ap.add_argument("--imagenet-head", action="store_true", help="lut step: 3 channels, 1,000 classes, width 1.0")
    ap.add_argument("--v1-width", type=float, default=0.25, help="the fbnet-v1 LUT's width multiplier (lut step "
                                                                 "with --space fbnet-v1, and the compare step)")
    ap.add_argument("--chains", type=int, default=32, help="lut step: chains for the junction model (0: none)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--format", default="onnx")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--sample", type=int, default=400)
    ap.add_argument("--networks", type=int, default=10)
    ap.add_argument("--check", type=int, default=20)
    ap.add_argument("--check-passes", type=int, default=3, help="lut step: lut check --passes (sweeps over the "
                    "networks measured whole; the build's entries keep lut build's 3)")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--train-limit", type=int, default=12000, help="compare step: training images per network")
    ap.add_argument("--train-epochs", type=int, default=8, help="compare step: training epochs per network")
    ap.add_argument("--rounds", type=int, default=3, help="search step: nas search --rounds (networks measured at "
                                                          "most per search)")
    ap.add_argument("--train-threads", type=int, help="search step: torch threads for training (default torch's)")
    args = ap.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; steps: {', '.join(STEPS)}")
    path = RESULTS / "dmasking.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["machine"] = fingerprint(sys.argv)
    stamp = {"command": "python bench/dmasking.py " + " ".join(sys.argv[1:]),
             "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
             "cpu": cpu_model()}  # each entry's own: results of several machines sit in one file

    def put(section: str, key: str, result: Any) -> None:
        """An entry of another CPU is kept beside the new one, under its CPU's name, not overwritten."""
        entries = doc.setdefault(section, {})
        old = entries.get(key)
        if old is not None and old.get("cpu") not in (None, stamp["cpu"]):
            entries[f"{key} ({old['cpu']})"] = entries.pop(key)
        entries[key] = {**stamp, "result": result}

    if "size" in steps:
        doc["size"] = {**stamp, "result": step_size()}
    if "lut" in steps:
        passes = f", networks checked over {args.check_passes} passes" if args.check_passes != 3 else ""
        checked = f", {args.check} networks checked" if args.check != 20 else ""
        put("lut", _lut_key(args) + checked + passes, step_lut(args))
    if "memory" in steps:
        doc["memory"] = {**stamp, "result": step_memory(args)}
    if "search" in steps:
        put("search", _search_key(args), step_search(args))
    if "compare" in steps:
        key = f"{_search_key(args)}, trained on {args.train_limit} x {args.train_epochs}"
        put("compare", key, step_compare(args, doc))
    write_json(path, doc)
    (RESULTS / "dmasking.md").write_text(table(doc))
    print(table(doc))


if __name__ == "__main__":
    main()
