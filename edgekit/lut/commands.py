"""``edgekit lut plan | predict | build``: argument set-up and the commands (called from ``edgekit.cli``)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .lut import STATISTICS

__all__ = ["add_lut_commands", "add_space_arguments", "space_from_args"]


def add_space_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="fbnet-v1", help="search space: fbnet-v1 (a block per layer) or fbnet-v2 "
                                                       "(channels, expansions, block types and input resolution)")
    p.add_argument("--resolution", type=int, help="input side (default 224)")
    p.add_argument("--resolutions", help="fbnet-v2: the input sides searched, comma-separated, each <= --resolution "
                                         "(default: the resolution and 3/4 of it)")
    p.add_argument("--width", type=float, help="channel multiplier (default 1.0)")
    p.add_argument("--in-chans", type=int, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, help="classes (default 1000)")
    p.add_argument("--head-channels", type=int, help="head 1x1 conv channels before width (default 1984)")


def space_from_args(args: argparse.Namespace):
    from .space import get_space

    resolutions = None
    if getattr(args, "resolutions", None):
        try:
            resolutions = tuple(int(r) for r in args.resolutions.split(","))
        except ValueError:
            raise ValueError(f"--resolutions {args.resolutions!r} must be comma-separated input sides, e.g. 32,24") \
                from None
    return get_space(args.space, resolution=args.resolution, width=args.width, in_chans=args.in_chans,
                     num_classes=args.num_classes, head_channels=args.head_channels, resolutions=resolutions)


def measured_signatures(args: argparse.Namespace, space):
    """What a build measures: every distinct signature of fbnet-v1; fbnet-v2's stems, heads, a
    ``--sample`` of its blocks (the block model predicts the rest) and the units of the ``--chains``."""
    sample = getattr(args, "sample", None)
    if space.name != "fbnet-v2":
        if sample is not None:
            raise ValueError(f"--sample is for fbnet-v2's channel-aware table; {space.name} measures every entry")
        return None
    from ..nas.channel_lut import measurement_plan
    from .junction import junction_signatures
    seed = getattr(args, "seed", 0)
    sigs = measurement_plan(space, DEFAULT_SAMPLE if sample is None else sample, seed=seed)
    if getattr(args, "chains", 0):
        have = {s.key for s in sigs}
        sigs += [s for s in junction_signatures(space, args.chains, seed=seed) if s.key not in have]
    return sigs


DEFAULT_SAMPLE = 400
DEFAULT_CHAINS = 32


def cmd_lut_plan(args: argparse.Namespace, out: Console) -> int:
    from .build import plan
    from .lut import load_lut

    space = space_from_args(args)
    stored = load_lut(args.lut) if args.lut and Path(args.lut).exists() else None
    if stored is not None and dict(stored.space) != space.to_dict():
        raise ValueError(f"{args.lut} holds a LUT of space {dict(stored.space)}, not {space.to_dict()}; pass the "
                         f"same space knobs")
    wanted = measured_signatures(args, space)
    todo = plan(space, stored, signatures=wanted)
    distinct = len(space.distinct_signatures())
    total = distinct if wanted is None else len(wanted)
    if args.json:
        print(json.dumps({"space": space.to_dict(), "distinct": distinct, "total": total, "stored": total - len(todo),
                          "missing": [s.key for s in todo], "chains": args.chains}, indent=2))
        return 0
    if wanted is None:
        what = f"{len(space.layers)} layers x 9 candidates, {total} distinct signatures"
    else:
        what = (f"{len(space.layers)} layers, {space.lut_entries()} layer-wise entries, {distinct} distinct signatures; "
                f"a build measures {total} (every stem and head, {total - sum(s.kind != 'block' for s in wanted)} "
                f"blocks) and fits a block model for the rest")
    chains = (f"; then {args.chains} chains of 4 consecutive units and {args.chains // 5} whole networks, measured "
              f"whole for the junction model" if args.chains else "")
    out.print(f"{space.name}: {what} (stem and head included, identity skips cost 0); {total - len(todo)} stored, "
              f"{len(todo)} to measure{chains}", markup=False, highlight=False, soft_wrap=True)
    for sig in todo[:args.show]:
        out.print(f"  {sig.key}", markup=False, highlight=False)
    if len(todo) > args.show:
        out.print(f"  ... and {len(todo) - args.show} more (--json lists all)", highlight=False)
    return 0


def cmd_lut_predict(args: argparse.Namespace, out: Console) -> int:
    from ..models import ArchSpec
    from .lut import load_lut
    from .predict import predict

    lut = load_lut(args.lut, format=args.format, precision=args.precision, threads=args.threads)
    try:
        text = Path(args.arch).read_text()
    except OSError as e:
        raise ValueError(f"cannot read ArchSpec {args.arch}: {e}") from None
    spec = ArchSpec.from_json(text)
    pred = predict(spec, lut)
    if args.json:
        print(json.dumps({"arch": spec.name, "lut": str(args.lut), **pred.to_dict()}, indent=2))
        return 0
    fitted = "no overhead model in the LUT" if pred.fitted_ms is None else f"with overhead model {pred.fitted_ms:.4f} ms"
    out.print(f"{spec.name}: plain sum {pred.plain_ms:.4f} ms; {fitted} ({lut.format} {lut.precision}, "
              f"{lut.threads} thread(s), {lut.device.get('device')})", markup=False, highlight=False, soft_wrap=True)
    if args.blocks:
        table = Table()
        table.add_column("signature")
        table.add_column("ms", justify="right")
        for key, ms in pred.blocks:
            table.add_row(key, f"{ms:.4f}")
        out.print(table)
    return 0


class _Progress:
    """``done/total``, elapsed time and ETA (from the mean time per unit so far), a line per call."""

    def __init__(self, out: Console, what: str):
        self.out, self.what, self.t0 = out, what, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (total - done) if done else float("nan")
        width = 24
        bar = "#" * round(width * done / total) if total else ""
        self.out.print(f"  [{bar:<{width}}] {self.what} {done}/{total}  {_clock(elapsed)} elapsed, "
                       f"ETA {_clock(eta)}", highlight=False, markup=False)


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing measured yet
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _device_timer(args: argparse.Namespace, space, *, work_dir: Path, statistic: str, expect=None, device=None,
                  cores: list[int] | None = None):
    from .._background import usable_cpus
    from ..devices.stats import Protocol
    from .device import DeviceTimer

    protocol = Protocol(threads=args.threads, warmup=args.warmup, runs=args.runs, max_runs=max(args.max_runs, args.runs))
    options = {"profile": args.profile} if args.profile else {}
    if cores is not None:
        options["cores"] = cores
    return DeviceTimer(space, work_dir=work_dir, device=device or args.device, format=args.format,
                       precision=args.precision,
                       protocol=protocol, calib_samples=args.calib_samples, calib_method=args.calib_method,
                       run_samples=args.run_samples, expect=expect, device_options=options,
                       workers=args.export_workers or min(2, usable_cpus()), passes=args.passes,
                       statistic=statistic, allow_emulated=args.allow_emulated)


def _work_dir(args: argparse.Namespace, anchor: str) -> Path:
    if args.work_dir:
        return Path(args.work_dir)
    path = Path(anchor)
    return path.with_name(path.stem + ".artifacts")


def _device_timers(args: argparse.Namespace, space, devices: list[str]) -> list:
    """One timer per --device; the local ones pinned to cores of their own."""
    from .fanout import local_cores

    cores = iter(local_cores(devices.count("local"), args.threads)) if "local" in devices else iter(())
    return [_device_timer(args, space, work_dir=_work_dir(args, args.out), statistic=args.statistic or "min",
                          device=d, cores=next(cores) if d == "local" else None) for d in devices]


def _cost(timers: list) -> dict:
    from .device import cost

    return cost([u for t in timers for u in t.log], timers[0].passes)


def _print_cost(cost: dict, out: Console) -> None:
    if cost["units"]:
        export = "-" if cost["export_s_mean"] is None else f"{cost['export_s_mean']:.2f} s"
        out.print(f"per unit: export {export} ({cost['exported']} exported, {cost['units'] - cost['exported']} "
                  f"re-used), device run {cost['run_s_mean']:.2f} s", highlight=False)


def cmd_lut_build(args: argparse.Namespace, out: Console) -> int:
    from .build import TorchTimer, build_lut, local_fingerprint, measure_networks
    from .device import build_on_device
    from .fanout import build_on_devices
    from .lut import save_lut

    from .._checks import check_count
    check_count("--chains", args.chains, minimum=0, hint=" (0: no junction model)")
    space = space_from_args(args)
    signatures = measured_signatures(args, space)

    progress = None if args.json else _Progress(out, "measured")
    devices = args.device or ["local"]
    fan_out = len(devices) > 1 or args.ray or args.ray_address is not None
    args.device = devices[0]

    if args.format == "torch":
        if args.statistic == "min":
            raise ValueError("--format torch times eager PyTorch by the median of its runs; drop --statistic min "
                             "or measure exported files (--format tflite or onnx)")
        if fan_out:
            raise ValueError("--format torch times eager PyTorch on this host only; measure exported files "
                             "(--format tflite or onnx) on several devices or through Ray, or pass one --device "
                             "and no --ray / --ray-address")
        if args.device != "local" or args.precision != "fp32":
            raise ValueError(f"--format torch times eager PyTorch fp32 on this host only (got --device {args.device} "
                             f"--precision {args.precision}); use --format tflite or onnx for a device")
        timer = TorchTimer(threads=args.threads, runs=args.runs, warmup=args.warmup)
        lut = build_lut(space, timer, device=local_fingerprint(timer.runtime, args.threads), format=args.format,
                        precision=args.precision, threads=args.threads, out=args.out, chunk=args.chunk,
                        progress=progress, signatures=signatures)
    elif fan_out:
        timers = _device_timers(args, space, devices)
        lut = build_on_devices(space, timers, out=args.out, chunk=args.chunk, progress=progress,
                               ray_address=args.ray_address, signatures=signatures)
        timer = timers[0]  # --networks: whole networks are measured on the first device
    else:
        timer = _device_timer(args, space, work_dir=_work_dir(args, args.out), statistic=args.statistic or "min")
        lut = build_on_device(space, timer, out=args.out, chunk=args.chunk, progress=progress, signatures=signatures)
    if signatures is not None and len(signatures) < len(space.distinct_signatures()):
        from ..nas.channel_lut import fit_block_model
        lut = lut.replace(block_model=fit_block_model(space, lut, seed=args.seed))
        save_lut(lut, args.out)
    if args.chains:
        from .junction import measure_junctions
        chains = None if args.json else _Progress(out, "chains measured")
        lut = measure_junctions(lut, space, timer, count=args.chains, seed=args.seed, out=args.out,
                                chunk=args.chunk, progress=chains)
    if args.networks:
        lut = measure_networks(lut, space, timer, samples=args.networks, seed=args.seed)
        save_lut(lut, args.out)
    cost = _cost(timers) if fan_out else timer.cost() if hasattr(timer, "cost") else None
    if args.json:
        junctions = None if lut.junctions is None else lut.junctions.get("model")
        print(json.dumps({"lut": str(args.out), "entries": len(lut.entries), "overhead": lut.overhead,
                          "block_model": lut.block_model, "junctions": junctions, "cost": cost}, indent=2))
        return 0
    out.print(f"wrote {args.out}: {len(lut.entries)} entries", highlight=False)
    if lut.block_model:
        m = lut.block_model
        h = m["held_out"]
        out.print(f"block model: fitted on {m['measured'] - h['n']} measured blocks, held-out {h['n']}: MAPE "
                  f"{h['mape']:.1f} %, {100 * h['within_10pct']:.0f} % within +-10 % (max {h['max_abs_pct']:.0f} %); "
                  f"refitted on all {m['measured']}", highlight=False, soft_wrap=True)
    if lut.junctions and lut.junctions.get("model"):
        j = lut.junctions["model"]
        e = j.get("errors") or {}
        cold = (f"; cold weights {1000 * j['d_cold_ms_per_kib']:.4f} us/KiB beyond {_capacity(j)} "
                f"({'applied: ' if j['cold_on'] else 'not applied: '}{100 * (j.get('cold_share') or 0):.0f} % of "
                f"networks outgrow it)" if j.get("cache_kib") else "; no cache size from the device: no cold term")
        out.print(f"junctions: {j['n']} chains measured whole; per crossing {1000 * j['a_ms']:+.2f} us "
                  f"{1000 * j['b_ms_per_kib']:+.3f} us/KiB{cold}; held-out chains off by "
                  f"{1000 * e.get('held_out_mae_ms', float('nan')):.2f} us on average", highlight=False, soft_wrap=True)
    if cost is not None:
        _print_cost(cost, out)
    if lut.overhead:
        o = lut.overhead
        out.print(f"overhead model: measured = {o['a_ms']:.4f} ms + {o['b']:.3f} x sum over {o['n']} networks; "
                  f"MAPE plain {o['mape_plain']:.1f} % -> fitted {o['mape_fitted']:.1f} %", highlight=False)
    return 0


def cmd_lut_check(args: argparse.Namespace, out: Console) -> int:
    from .check import check_lut, plot_check
    from .lut import load_lut
    from .space import SPACES

    if args.threads is None:
        lut = load_lut(args.lut)
        args.threads = lut.threads
    lut = load_lut(args.lut, device=args.device, format=args.format, precision=args.precision, threads=args.threads)
    args.format, args.precision = lut.format, lut.precision
    if lut.format == "torch":
        raise ValueError(f"{args.lut} is a torch LUT; lut check measures exported tflite / onnx files on a device")
    space = SPACES[lut.space.get("name", "fbnet-v1")].from_dict(lut.space)
    # the networks are measured as the LUT's entries were (its statistic)
    timer = _device_timer(args, space, work_dir=_work_dir(args, args.lut), expect=lut.device, statistic=lut.statistic)

    progress = None if args.json else _Progress(out, "measured network")

    report = check_lut(lut, timer, samples=args.samples, seed=args.seed, fit=args.fit, progress=progress)
    report["cost"] = timer.cost()
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            report["plot"] = None
            report["plot_note"] = "matplotlib is not installed: no plot written (pip install matplotlib)"
        else:
            report["plot"] = str(plot_check(report, args.plot))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table()
    for col in ("", "n", "within 5%", "within 10%", "MAPE %", "Spearman", "Kendall"):
        table.add_column(col, justify="right" if col else "left")

    def row(label: str, m: dict) -> None:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(label, str(m["n"]), f"{100 * m['within_5pct']:.0f} %", f"{100 * m['within_10pct']:.0f} %",
                      f"{m['mape']:.1f}", f(m["spearman"]), f(m["kendall"]))

    if report.get("entries"):
        row("entries alone (no junctions), all", report["entries"])
    row("plain sum, all", report["plain"])
    if report["lut_overhead"]:
        row("LUT overhead model, all", report["lut_overhead"]["all"])
    held = report["held_out"]
    if "omitted" in held:
        out.print(held["omitted"], highlight=False)
    else:
        row(f"plain sum, held-out ({held['evaluated']})", held["plain"])
        row(f"fit on first {held['fit_networks']}, held-out", held["fitted"])
    out.print(table)
    if report.get("plot"):
        out.print(f"plot: {report['plot']}", highlight=False)
    elif report.get("plot_note"):
        out.print(report["plot_note"], highlight=False)
    return 0


def _add_device_arguments(p: argparse.ArgumentParser, *, threads_default: int | None, many: bool = False) -> None:
    if many:
        p.add_argument("--device", action="append", help="local | ssh://user@host[:port] | adb://SERIAL | qemu://pi4 "
                       "(default local); repeated: devices of one kind measuring in parallel through Ray, e.g. two "
                       "Pis (local twice: this machine, each on cores of its own)")
        p.add_argument("--ray", action="store_true", help="fan out through a local Ray even with one --device")
        p.add_argument("--ray-address", help="the Ray cluster to fan out on (HOST:PORT, ray://HOST:PORT or auto); "
                       "default with several --device: a local Ray on this machine")
    else:
        p.add_argument("--device", default="local", help="local | ssh://user@host[:port] | adb://SERIAL | qemu://pi4")
    p.add_argument("--profile", help="device profile (JSON/TOML) for ssh:// and adb://")
    p.add_argument("--allow-emulated", action="store_true", help="time an emulated board anyway (its timings are "
                   "the emulator's, not the board's; the LUT's header says emulated)")
    p.add_argument("--threads", type=int, default=threads_default)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-runs", type=int, default=200, help="protocol: more runs while the CV is high, up to N")
    p.add_argument("--calib-samples", type=int, default=64, help="Fashion-MNIST images for int8 calibration")
    p.add_argument("--calib-method", default="minmax")
    p.add_argument("--run-samples", type=int, default=4, help="inputs fed to each timed file")
    p.add_argument("--work-dir", help="where exported files and manifests go (default: next to the LUT)")
    p.add_argument("--export-workers", type=int, help="processes exporting units ahead of their measurement "
                                                      "(default: 2 when two CPUs are usable, else 1)")
    p.add_argument("--passes", type=int, default=3,
                   help="sweeps over each chunk of units; a unit's figure is the smallest over the sweeps "
                        "(default 3: a slow spell on the device spoils one sweep, not the figure)")


def add_lut_commands(sub: argparse._SubParsersAction) -> None:
    lut = sub.add_parser("lut", help="latency lookup tables: plan, build, predict, check")
    lsub = lut.add_subparsers(dest="lut_command", required=True)
    p = lsub.add_parser("plan", help="the distinct blocks a LUT of the space needs (minus those stored)")
    add_space_arguments(p)
    p.add_argument("--lut", help="existing (partial) LUT: list only what it lacks")
    p.add_argument("--sample", type=int, help=f"fbnet-v2: block entries a build measures (default {DEFAULT_SAMPLE})")
    p.add_argument("--seed", type=int, default=0, help="fbnet-v2: which blocks the sample draws")
    p.add_argument("--chains", type=int, default=DEFAULT_CHAINS, help="chains a build measures whole (fbnet-v2: "
                   "their units are measured entries too)")
    p.add_argument("--show", type=int, default=20, help="signatures to print")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lut_plan)
    p = lsub.add_parser("predict", help="predicted latency of an ArchSpec from a LUT")
    p.add_argument("--lut", required=True)
    p.add_argument("--arch", required=True, help="ArchSpec JSON (e.g. from `edgekit nas search`)")
    p.add_argument("--format", help="refuse the LUT unless it is this format")
    p.add_argument("--precision", help="refuse the LUT unless it is this precision")
    p.add_argument("--threads", type=int, help="refuse the LUT unless it used this many threads")
    p.add_argument("--blocks", action="store_true", help="print every block's entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lut_predict)
    p = lsub.add_parser("build", help="measure a LUT (resumes an existing --out)")
    add_space_arguments(p)
    p.add_argument("--format", default="onnx", help="tflite or onnx (exported, run on --device) or torch (local)")
    p.add_argument("--precision", default="fp32", help="fp32 or int8")
    _add_device_arguments(p, threads_default=1, many=True)
    p.add_argument("--statistic", choices=STATISTICS,
                   help="a unit's figure from its timed runs: min (default for tflite / onnx: the fastest run, "
                        "robust to a busy device) or median (--format torch)")
    p.add_argument("--chunk", type=int, default=16, help="save after every N measured blocks")
    p.add_argument("--networks", type=int, default=0, help="whole networks to measure for the overhead fit")
    p.add_argument("--chains", type=int, default=DEFAULT_CHAINS,
                   help=f"chains of 4 consecutive units (and a fifth as many whole networks) measured whole, for the "
                        f"junction model that puts each block's per-call cost, the crossing between blocks and "
                        f"weights outgrowing the cache into the plain sum (default {DEFAULT_CHAINS}; 0: none, the "
                        f"plain sum is the entries' sum)")
    p.add_argument("--sample", type=int, help=f"fbnet-v2: block entries to measure (default {DEFAULT_SAMPLE}; "
                                              f"every stem and head is measured, a block model fitted on these "
                                              f"predicts the other blocks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lut_build)
    p = lsub.add_parser("check", help="sampled whole networks measured vs the LUT's prediction")
    p.add_argument("--lut", required=True)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit", type=int, help="networks fitting the overhead model (default samples // 3, >= 2)")
    p.add_argument("--format", help="refuse the LUT unless it is this format (default: the LUT's)")
    p.add_argument("--precision", help="refuse the LUT unless it is this precision (default: the LUT's)")
    _add_device_arguments(p, threads_default=None)
    p.add_argument("--plot", help="PNG scatter plot of predicted vs measured")
    p.add_argument("--out", help="write the JSON report here too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lut_check)


def _capacity(j: dict) -> str:
    """The weights a chain keeps warm, as the junction model records it."""
    cap = j.get("capacity_kib")
    if cap is None or cap == j["cache_kib"]:
        return f"the {j['cache_kib']:.0f} KiB L2"
    return f"{cap:.0f} KiB (fitted) of the {j['cache_kib']:.0f} KiB L2"
