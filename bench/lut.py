"""FBNet v1 latency lookup tables on the local device: how long a LUT takes, how well it predicts,
and a DNAS search closed on the device.

The space: fbnet-v1 at Fashion-MNIST scale (1 channel, 10 classes), 64x64 input, width 1.0. Per
precision (TFLite fp32 / int8, 1 thread):

- ``build``: the whole LUT from an empty work directory through ``edgekit.lut.build_on_device``
  (every distinct block exported as the network would be, measured on the local device); wall time,
  entries, export and run seconds per block. Target: int8 in <= 10 minutes here.
- ``check``: ``--samples`` architectures sampled (seeded) from the space, exported and measured
  whole; plain-sum and fitted (overhead model on the first ``--fit``, scored on the rest) accuracy;
  a scatter plot. Target: >= 95 % within +-10 % after the fit.
- ``search``: DNAS on Fashion-MNIST with a target half-way between the fastest and the slowest point
  of the space (by the LUT, mapped through the overhead model from ``check``), then the searched
  spec measured on the device. Target: within +-10 % of the target.

    .venv/bin/python bench/lut.py                                   # everything (long)
    .venv/bin/python bench/lut.py --precisions int8 --steps build   # the build time alone

Writes bench/results/lut.json (steps run on separate occasions accumulate there, each with its
command and date), lut.md and lut-check-<precision>.png; exported files go to bench/out/lut/
(gitignored).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import OUT, RESULTS, fingerprint, write_json  # noqa: E402

STEPS = ("build", "check", "search")
BUILD_TARGET_S, CHECK_TARGET, SEARCH_TARGET = 600.0, 0.95, 0.10


def log(msg: str) -> None:
    print(msg, flush=True)


def space_for(args):
    from edgekit.lut import FBNetV1Space
    return FBNetV1Space(resolution=args.resolution, width=args.width, in_chans=1, num_classes=10)


def work_for(args, precision: str) -> Path:
    """Where one precision's LUT and exported files live (bench/out/lut/...)."""
    return OUT / "lut" / f"{precision}-r{args.resolution}-w{args.width:g}"


def timer_for(args, space, precision: str, work: Path, expect=None):
    from edgekit.devices.stats import Protocol
    from edgekit.devices.store import ResultStore
    from edgekit.lut import DeviceTimer
    return DeviceTimer(space, work_dir=work, device="local", format="tflite", precision=precision,
                       protocol=Protocol(threads=1), store=ResultStore(OUT / "lut" / "results.db"), expect=expect,
                       workers=args.workers, passes=args.passes, statistic=args.statistic)


def build(args, precision: str) -> dict[str, Any]:
    from edgekit.lut import build_on_device
    space = space_for(args)
    work = work_for(args, precision)
    if work.exists():
        shutil.rmtree(work)  # a build from nothing: no file re-used
    work.mkdir(parents=True)
    out = work / "lut.json"
    timer = timer_for(args, space, precision, work / "files")
    t0 = time.perf_counter()
    lut = build_on_device(space, timer, out=out, chunk=16,
                          progress=lambda d, t: log(f"  {precision}: {d}/{t} blocks, {time.perf_counter() - t0:.0f} s"))
    seconds = time.perf_counter() - t0
    return {"lut": str(out.relative_to(OUT.parent.parent)), "entries": len(lut.entries), "seconds": round(seconds, 1),
            "target_seconds": BUILD_TARGET_S, "met": seconds <= BUILD_TARGET_S, "cost": timer.cost(),
            "export_workers": args.workers, "passes": args.passes, "statistic": args.statistic}


def check(args, precision: str) -> dict[str, Any]:
    from edgekit.lut import check_lut, load_lut, plot_check, save_lut, with_overhead
    space = space_for(args)
    work = work_for(args, precision)
    lut = load_lut(work / "lut.json")
    timer = timer_for(args, space, precision, work / "files", expect=lut.device)
    t0 = time.perf_counter()
    report = check_lut(lut, timer, samples=args.samples, seed=args.seed, fit=args.fit,
                       progress=lambda d, t: log(f"  {precision}: network {d}/{t}"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["passes"], report["statistic"] = args.passes, lut.statistic
    png = Path(args.out).resolve().with_name(f"{Path(args.out).stem}-check-{precision}.png")
    plot_check(report, png)
    report["plot"] = str(png.relative_to(RESULTS.parent.parent))
    fitted = report.get("held_out", {}).get("fitted", {})
    report["target"] = CHECK_TARGET
    report["met"] = bool(fitted) and fitted["within_10pct"] >= CHECK_TARGET
    # the measured networks give the LUT its overhead model, which the search maps its target through
    save_lut(with_overhead(lut, space, [{"choices": n["choices"], "ms": n["measured_ms"]}
                                        for n in report["networks"]]), work / "lut.json")
    return report


def search(args, precision: str) -> dict[str, Any]:
    from edgekit.lut import NetworkUnit, load_lut
    from edgekit.lut.predict import plain_target
    from edgekit.nas import DnasConfig, fastest_choices, slowest_point_ms
    from edgekit.nas import search as dnas
    space = space_for(args)
    work = work_for(args, precision)
    lut = load_lut(work / "lut.json")
    _, fast = fastest_choices(space, lut)
    slow = slowest_point_ms(space, lut)
    plain_mid = (fast + slow) / 2
    o = lut.overhead
    target = plain_mid if not o else o["a_ms"] + o["b"] * plain_mid  # device milliseconds
    plain, note = plain_target(lut, target)
    t0 = time.perf_counter()
    config = DnasConfig(epochs=args.epochs, warmup_epochs=min(1, args.epochs - 1), limit=args.limit, target_ms=plain,
                        seed=args.seed)
    result = dnas(space, lut, data="fashion-mnist", config=config)
    search_s = time.perf_counter() - t0
    timer = timer_for(args, space, precision, work / "files", expect=lut.device)
    (measured,) = timer([NetworkUnit(result.spec, space.in_chans, space.num_classes)])
    error = (measured - target) / target
    return {"target_ms": target, "target_plain_ms": plain, "target_note": note, "choices": list(result.choices),
            "predicted": result.prediction.to_dict(), "measured_ms": measured, "error": error,
            "met": abs(error) <= SEARCH_TARGET, "search_seconds": round(search_s, 1), "epochs": args.epochs,
            "limit": args.limit, "notes": list(result.notes), "derive": config.derive,
            "argmax": list(result.argmax), "argmax_plain_ms": result.argmax_ms}


def markdown(doc: dict[str, Any]) -> str:
    fp = doc["fingerprint"]
    lines = [f"fbnet-v1 at {doc['resolution']}x{doc['resolution']}, width {doc['width']:g}, 1 channel, 10 classes; "
             f"TFLite, local device, 1 thread; {fp['cpu']}, {fp['date'][:10]}; load average at start "
             f"{fp['loadavg_start']}.", ""]
    for precision, r in doc["precisions"].items():
        b, c, s = r.get("build"), r.get("check"), r.get("search")
        if b:
            cost = b["cost"]
            lines.append(f"- {precision} build: {b['entries']} entries in {b['seconds'] / 60:.1f} min "
                         f"(target {BUILD_TARGET_S / 60:.0f} min: {'met' if b['met'] else 'missed'}); per block "
                         f"export {cost['export_s_mean']:.2f} s with {b['export_workers']} export processes, device "
                         f"run {cost['run_s_mean']:.2f} s; {b.get('passes', 1)} passes, each unit's figure its "
                         f"{'fastest run' if b.get('statistic', 'median') == 'min' else 'smallest median'} over "
                         f"them")
        if c:
            p, h = c["plain"], c.get("held_out", {})
            lines.append(f"- {precision} check, {c['samples']} networks: plain sum {100 * p['within_10pct']:.0f} % "
                         f"within +-10 % (MAPE {p['mape']:.1f} %, Spearman {p['spearman']:.3f})" +
                         (f"; fitted on {h['fit_networks']}, held-out {h['fitted']['n']}: "
                          f"{100 * h['fitted']['within_10pct']:.0f} % within +-10 % (MAPE {h['fitted']['mape']:.1f} %;"
                          f" target {100 * CHECK_TARGET:.0f} %: {'met' if c['met'] else 'missed'})" if h else ""))
        if s:
            lines.append(f"- {precision} search: target {s['target_ms']:.4f} ms, searched spec measured "
                         f"{s['measured_ms']:.4f} ms ({100 * s['error']:+.1f} %; target +-10 %: "
                         f"{'met' if s['met'] else 'missed'}); predicted {s['predicted']['plain_ms']:.4f} ms plain"
                         + ("" if s["predicted"].get("fitted_ms") is None else
                            f", {s['predicted']['fitted_ms']:.4f} ms fitted")
                         + ("" if s.get("argmax_plain_ms") is None else
                            f"; derived by {s['derive']} (argmax alone: {s['argmax_plain_ms']:.4f} ms plain)")
                         + f"; {s['epochs']} epochs on {s['limit']} images")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from edgekit.lut.lut import STATISTICS
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precisions", default="int8,fp32")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2, help="export processes")
    p.add_argument("--passes", type=int, default=3, help="sweeps per chunk; each unit's smallest figure counts")
    p.add_argument("--statistic", choices=STATISTICS, default="min",
                   help="a unit's figure from one run: its fastest run (default) or its median")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--fit", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--limit", type=int, default=4000)
    p.add_argument("--out", default=str(RESULTS / "lut.json"))
    args = p.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"unknown steps {unknown}; choose from {STEPS}")
    out = Path(args.out)
    run = fingerprint(["bench/lut.py", *argv])
    doc: dict[str, Any] = {"fingerprint": run, "resolution": args.resolution, "width": args.width, "precisions": {}}
    if out.is_file():  # steps run on separate occasions accumulate in one file, each with its own run record
        doc = json.loads(out.read_text())
        if (doc["resolution"], doc["width"]) != (args.resolution, args.width):
            p.error(f"{out} holds {doc['resolution']} px, width {doc['width']}; pass another --out")
    for precision in args.precisions.split(","):
        r = doc["precisions"].setdefault(precision, {})
        for step in STEPS:
            if step in steps:
                log(f"== {precision}: {step}")
                r[step] = {"build": build, "check": check, "search": search}[step](args, precision)
                r[step]["run"] = {k: run[k] for k in ("date", "command", "loadavg_start")}
                write_json(out, doc)
    out.with_suffix(".md").write_text(markdown(doc))
    log(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
