"""``edgekit lut plan | predict | build``: argument set-up and the commands (called from ``edgekit.cli``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["add_lut_commands", "add_space_arguments", "space_from_args"]


def add_space_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="fbnet-v1", help="search space (fbnet-v1)")
    p.add_argument("--resolution", type=int, help="input side (default 224)")
    p.add_argument("--width", type=float, help="channel multiplier (default 1.0)")
    p.add_argument("--in-chans", type=int, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, help="classes (default 1000)")
    p.add_argument("--head-channels", type=int, help="head 1x1 conv channels before width (default 1984)")


def space_from_args(args: argparse.Namespace):
    from .space import get_space

    return get_space(args.space, resolution=args.resolution, width=args.width, in_chans=args.in_chans,
                     num_classes=args.num_classes, head_channels=args.head_channels)


def cmd_lut_plan(args: argparse.Namespace, out: Console) -> int:
    from .build import plan
    from .lut import load_lut

    space = space_from_args(args)
    stored = load_lut(args.lut) if args.lut and Path(args.lut).exists() else None
    if stored is not None and dict(stored.space) != space.to_dict():
        raise ValueError(f"{args.lut} holds a LUT of space {dict(stored.space)}, not {space.to_dict()}; pass the "
                         f"same space knobs")
    todo = plan(space, stored)
    total = len(space.distinct_signatures())
    if args.json:
        print(json.dumps({"space": space.to_dict(), "total": total, "stored": total - len(todo),
                          "missing": [s.key for s in todo]}, indent=2))
        return 0
    out.print(f"{space.name}: {len(space.layers)} layers x 9 candidates, {total} distinct signatures "
              f"(stem and head included, identity skips cost 0); {total - len(todo)} stored, {len(todo)} to measure",
              markup=False, highlight=False, soft_wrap=True)
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


def cmd_lut_build(args: argparse.Namespace, out: Console) -> int:
    from .build import OrtTimer, TorchTimer, build_lut, local_fingerprint, measure_networks
    from .lut import save_lut

    if args.device != "local":
        raise ValueError(f"lut build measures on --device local only for now (got {args.device!r}); device "
                         f"runners for ssh:// and adb:// plug in through build_lut's measuring function")
    timers = {("onnx", "fp32"): OrtTimer, ("torch", "fp32"): TorchTimer}
    if (args.format, args.precision) not in timers:
        raise ValueError(f"local lut build supports --format onnx or torch with --precision fp32 (got "
                         f"{args.format} {args.precision})")
    timer = timers[args.format, args.precision](threads=args.threads, runs=args.runs, warmup=args.warmup)
    space = space_from_args(args)

    def progress(done: int, total: int) -> None:
        if not args.json:
            out.print(f"  measured {done}/{total}", highlight=False)

    lut = build_lut(space, timer, device=local_fingerprint(timer.runtime, args.threads), format=args.format,
                    precision=args.precision, threads=args.threads, out=args.out, chunk=args.chunk, progress=progress)
    if args.networks:
        lut = measure_networks(lut, space, timer, samples=args.networks, seed=args.seed)
        save_lut(lut, args.out)
    if args.json:
        print(json.dumps({"lut": str(args.out), "entries": len(lut.entries), "overhead": lut.overhead}, indent=2))
        return 0
    out.print(f"wrote {args.out}: {len(lut.entries)} entries", highlight=False)
    if lut.overhead:
        o = lut.overhead
        out.print(f"overhead model: measured = {o['a_ms']:.4f} ms + {o['b']:.3f} x sum over {o['n']} networks; "
                  f"MAPE plain {o['mape_plain']:.1f} % -> fitted {o['mape_fitted']:.1f} %", highlight=False)
    return 0


def add_lut_commands(sub: argparse._SubParsersAction) -> None:
    lut = sub.add_parser("lut", help="latency lookup tables: plan, build, predict")
    lsub = lut.add_subparsers(dest="lut_command", required=True)
    p = lsub.add_parser("plan", help="the distinct blocks a LUT of the space needs (minus those stored)")
    add_space_arguments(p)
    p.add_argument("--lut", help="existing (partial) LUT: list only what it lacks")
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
    p.add_argument("--device", default="local")
    p.add_argument("--format", default="onnx", help="onnx or torch (local)")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--chunk", type=int, default=8, help="save after every N measured blocks")
    p.add_argument("--networks", type=int, default=0, help="whole networks to measure for the overhead fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lut_build)
