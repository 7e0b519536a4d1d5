"""``edgekit nas search``: argument set-up and the command (called from ``edgekit.cli``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["add_nas_commands"]


def cmd_nas_search(args: argparse.Namespace, out: Console) -> int:
    from ..lut.lut import load_lut
    from ..lut.space import SPACES
    from ..lut.predict import plain_target
    from .dnas import DnasConfig, save_spec, search

    lut = load_lut(args.lut, format=args.format, precision=args.precision, threads=args.threads)
    if args.space not in SPACES:
        raise ValueError(f"unknown search space {args.space!r} (known: {', '.join(SPACES.names())})")
    if lut.space.get("name") != args.space:
        hint = (" (a channel search reads a channel-aware table: `edgekit lut build --space fbnet-v2`)"
                if args.space == "fbnet-v2" else "")
        raise ValueError(f"{args.lut} is a LUT of space {lut.space.get('name')!r}, not {args.space!r}{hint}")
    space = SPACES[args.space].from_dict(lut.space)
    target, target_note = (None, None) if args.target_ms is None else plain_target(lut, args.target_ms)
    if args.measure and lut.format != "torch" and lut.device.get("device") is None:
        raise ValueError(f"{args.lut} does not name the device it was measured on; --measure cannot run the spec")
    from .._checks import check_count
    check_count("--rounds", args.rounds)
    if not 0 < args.tolerance < 1:
        raise ValueError(f"--tolerance {args.tolerance} must be a share of the target in (0, 1), e.g. 0.05")
    if args.train_threads is not None:
        import torch
        check_count("--train-threads", args.train_threads)
        torch.set_num_threads(args.train_threads)
    config = DnasConfig(epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs - 1),
                        batch_size=args.batch_size, limit=args.limit, target_ms=target, seed=args.seed,
                        theta_lr=args.theta_lr, derive=args.derive, band=args.band)

    def progress(rec: dict) -> None:
        if not args.json:
            out.print(f"epoch {rec['epoch']}: tau {rec['tau']:.3f}  beta {rec['beta']:.3g}  w loss {rec['w_loss']:.3f}  "
                      f"E[LAT] {rec['expected_ms']:.4f} ms  argmax {rec['argmax_ms']:.4f} ms  "
                      f"({rec['seconds']:.0f} s)", highlight=False)

    if target_note and not args.json:
        out.print(f"note: {target_note}", markup=False, highlight=False, soft_wrap=True)
    if args.space == "fbnet-v2":
        from .channel_search import search_channels
        result = search_channels(space, lut, data=args.data, config=config, progress=progress)
    else:
        result = search(space, lut, data=args.data, config=config, progress=progress)
    save_spec(result, args.out)
    measured = None
    if args.measure:
        result, measured = _measure_rounds(args, lut, space, result, config.band)
        save_spec(result, args.out)
    if args.json:
        print(json.dumps({"out": str(args.out), **result.to_dict(), "target_note": target_note,
                          "measured": measured}, indent=2))
        return 0
    p = result.prediction
    fitted = "" if p.fitted_ms is None else f", {p.fitted_ms:.4f} ms with the overhead model"
    out.print(f"wrote {args.out}: predicted {p.plain_ms:.4f} ms (LUT sum{fitted}); space spans "
              f"{result.fastest_ms:.4f}-{result.slowest_ms:.4f} ms", highlight=False, soft_wrap=True)
    out.print("choices: " + _describe(result), markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        out.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if measured is not None:
        for r in measured["rounds"] if len(measured["rounds"]) > 1 else ():
            error = "" if r["error_pct"] is None else f" ({r['error_pct']:+.1f} % of the target)"
            out.print(f"round {r['round']}: derived at {r['plain_target_ms']:.4f} ms of plain sum, predicted "
                      f"{r['plain_ms']:.4f} ms, measured {r['measured_ms']:.4f} ms{error}",
                      markup=False, highlight=False, soft_wrap=True)
        fitted = "" if measured["fitted_ms"] is None else (f", overhead model {measured['fitted_ms']:.4f} ms "
                                                           f"({measured['fitted_error_pct']:+.1f} %)")
        kept = "" if len(measured["rounds"]) == 1 else f"kept round {measured['round']}: "
        out.print(f"{kept}measured on {measured['device']}: {measured['measured_ms']:.4f} ms; LUT plain sum "
                  f"{measured['plain_ms']:.4f} ms ({measured['plain_error_pct']:+.1f} %){fitted}; added to "
                  f"{args.lut} ({measured['lut_networks']} measured networks"
                  + (", overhead model refitted)" if measured["overhead_refitted"] else ")"),
                  markup=False, highlight=False, soft_wrap=True)
    return 0


def _describe(result) -> str:
    if hasattr(result, "point"):
        p = result.point
        return (f"{p['resolution']} px, stem {p['stem']}, " +
                " ".join(f"{b}/{c}/e{e:g}" for b, c, e in p["layers"]))
    return " ".join(result.choices)


def _measure_rounds(args: argparse.Namespace, lut, space, result, band: float) -> tuple[Any, dict]:
    """The loop's last step: the searched spec exported as the LUT's entries were, run on the LUT's
    device (the result goes to the results store), compared with the prediction, and added to the
    LUT's measured networks so the overhead model, and the next search's target, use it.

    With a target, up to ``--rounds`` networks: while the measured latency is more than
    ``--tolerance`` off the target, the derivation runs again from the same architecture
    probabilities at the plain-sum budget :func:`next_budget` aims from the networks measured so
    far, and that network is measured too. The one measured closest to the target is kept."""
    from ..lut.build import NetworkUnit
    from ..lut.lut import save_lut
    from ..lut.predict import add_measured_network

    timer, start_lut = _spec_timer(args, lut, space), lut
    tried: list[tuple[Any, dict]] = []
    while True:
        unit = NetworkUnit(result.spec, space.in_chans, space.num_classes)
        (ms,) = timer([unit])
        lut = add_measured_network(lut, space, result.choices, ms)
        save_lut(lut, args.lut)
        p = result.prediction
        error = None if args.target_ms is None else 100 * (ms - args.target_ms) / args.target_ms
        tried.append((result, {"round": len(tried) + 1, "choices": _jsonable(result.choices),
                               "plain_target_ms": result.target_ms, "plain_ms": p.plain_ms, "measured_ms": ms,
                               "error_pct": error, "fitted_ms": p.fitted_ms}))
        if error is None or abs(error) <= 100 * args.tolerance or len(tried) >= args.rounds or result.rederive is None:
            break
        following = result.rederive(next_budget([(r["plain_ms"], r["measured_ms"]) for _, r in tried],
                                                args.target_ms, band))
        if any(_jsonable(following.choices) == r["choices"] for _, r in tried):
            break  # the corrected budget derives a network already measured: the space has nothing nearer
        result = following
    result, kept = min(tried, key=lambda t: abs(t[1]["error_pct"] or 0.0))
    p = result.prediction
    return result, {"device": lut.device.get("device", "local"), "format": lut.format, "precision": lut.precision,
                    "threads": lut.threads, "measured_ms": kept["measured_ms"], "plain_ms": p.plain_ms,
                    "plain_error_pct": 100 * (p.plain_ms - kept["measured_ms"]) / kept["measured_ms"],
                    "fitted_ms": p.fitted_ms, "fitted_error_pct": None if p.fitted_ms is None else
                    100 * (p.fitted_ms - kept["measured_ms"]) / kept["measured_ms"], "round": kept["round"],
                    "rounds": [r for _, r in tried], "lut_networks": len(lut.networks),
                    "overhead_refitted": lut.overhead != start_lut.overhead}


def next_budget(measured: list[tuple[float, float]], target_ms: float, band: float) -> float:
    """The plain-sum budget of the next round from the ``(plain_ms, measured_ms)`` of the networks
    measured so far: the plain sum at which the device should take ``target_ms``, centred in the
    derivation's ``[B (1 - band), B]`` window.

    When networks were measured on both sides of the target, the plain sum is interpolated between
    the nearest one below and the nearest one above (regula falsi: two networks' ratios of measured
    to plain sum differ by a few percent, so a ratio alone can jump over the target and back); else,
    or when the pair is not ordered alike in both (plain sum lower but measured higher), the target
    is scaled by the ratio of the network measured closest to it."""
    if not measured:
        raise ValueError("next_budget needs at least one measured network")
    below = [pm for pm in measured if pm[1] < target_ms]
    above = [pm for pm in measured if pm[1] > target_ms]
    plain = None
    if below and above:
        (p0, m0), (p1, m1) = max(below, key=lambda pm: pm[1]), min(above, key=lambda pm: pm[1])
        if p1 > p0:
            plain = p0 + (target_ms - m0) * (p1 - p0) / (m1 - m0)
    if plain is None:
        p, m = min(measured, key=lambda pm: abs(pm[1] - target_ms))
        plain = target_ms * p / m
    return plain / (1 - band / 2)


def _jsonable(choices: Any) -> Any:
    return json.loads(json.dumps(list(choices)))


def _spec_timer(args: argparse.Namespace, lut, space):
    """What measures a searched spec: the LUT's device, format, precision, threads and statistic."""
    from ..lut.build import TorchTimer
    from ..lut.device import DeviceTimer

    if lut.format == "torch":
        return TorchTimer(threads=lut.threads)
    return DeviceTimer.for_lut(lut, space, work_dir=Path(args.out).with_suffix(".artifacts"), passes=args.passes,
                               device_options={"profile": args.profile} if args.profile else None)


def add_nas_commands(sub: argparse._SubParsersAction) -> None:
    nas = sub.add_parser("nas", help="hardware-aware architecture search")
    nsub = nas.add_subparsers(dest="nas_command", required=True)
    p = nsub.add_parser("search", help="FBNet v1 DNAS or FBNetV2 DMaskingNAS over a space with its LUT; writes the "
                                       "searched ArchSpec")
    p.add_argument("--space", default="fbnet-v1", help="fbnet-v1 (a block per layer) or fbnet-v2 (channels, "
                                                       "expansions, block types, input resolution)")
    p.add_argument("--lut", required=True, help="LUT JSON of the space (its knobs set the space's scale)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, a directory of IDX files or class folders")
    p.add_argument("--target-ms", type=float, help="latency target in ms on the LUT's device (mapped to the LUT's plain "
                                                   "sum by its overhead model when it has one); none = the paper's "
                                                   "fixed beta")
    p.add_argument("--out", required=True, help="ArchSpec JSON to write")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=4000, help="training images (80 %% weights, 20 %% architecture)")
    p.add_argument("--theta-lr", type=float, default=0.01)
    p.add_argument("--derive", choices=("budget", "argmax"), default="budget",
                   help="with --target-ms: budget (default) = the most likely architecture whose LUT prediction lies "
                        "in [target x (1 - band), target]; argmax = the most likely candidate of every layer")
    p.add_argument("--band", type=float, default=0.05, help="share below the target the budget derivation may use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", help="refuse the LUT unless it is this format")
    p.add_argument("--precision", help="refuse the LUT unless it is this precision")
    p.add_argument("--threads", type=int, help="refuse the LUT unless it used this many threads")
    p.add_argument("--train-threads", type=int, help="torch threads for the search's training (default: torch's, "
                   "one per core; on a busy machine 1 is often faster)")
    p.add_argument("--measure", action="store_true",
                   help="export the searched spec, run it on the LUT's device, compare with the prediction and add "
                        "the measurement to the LUT (its overhead model then maps the next --target-ms)")
    p.add_argument("--rounds", type=int, default=3,
                   help="--measure with --target-ms: networks measured at most; while one is more than --tolerance "
                        "off the target, derive again from the same probabilities at a budget aimed by the networks "
                        "measured so far, and keep the one closest to the target (1: measure the first only)")
    p.add_argument("--tolerance", type=float, default=0.05, help="--rounds: share off the target that is close enough")
    p.add_argument("--profile", help="device profile (JSON/TOML) for the LUT's ssh:// or adb:// device (--measure)")
    p.add_argument("--passes", type=int, default=3, help="--measure: runs of the spec, its figure the smallest of "
                                                         "the LUT's statistic (as `lut build` and `lut check` "
                                                         "measure)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nas_search)
